// Must not compile: a key directory without keys().
#include <chatkit/key_directory.hpp>

struct no_keys {
    std::vector<chatkit::key_record> all() { return {}; }
};

static_assert(chatkit::key_directory_check<no_keys>::value);
