// With odr_a.cpp: every installed header in a second translation unit.
#include <odr_headers.hpp> // generated: every installed header

int odr_b() { return static_cast<int>(chatkit::random_id().size()); }
