#include "odr_headers.hpp"

int odr_b() { return static_cast<int>(chatkit::random_id().size()); }
