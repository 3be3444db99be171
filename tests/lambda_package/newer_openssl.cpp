// A program that asks libcrypto.so.3 for more than OPENSSL_3.0.0: OPENSSL_strcasecmp came with
// OpenSSL 3.0.3, under the symbol version OPENSSL_3.0.3. scripts/lambda-zip must refuse to leave
// OpenSSL to the image for it (lambda_package_test).
#include <openssl/crypto.h>

int main(int argc, char** argv) { return OPENSSL_strcasecmp(argc > 1 ? argv[1] : "a", "A"); }
