// With odr_b.cpp: every public header in two translation units of one program, so a missing
// `inline` fails to link (as cpp-httplib's test/include_httplib.cc does).
#include <odr_headers.hpp> // generated: every installed header

int odr_b();
int odr_a() { return static_cast<int>(chatkit::random_id().size()); }
int main() { return odr_a() + odr_b() == 64 ? 0 : 1; }
