#include "auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <stdexcept>

namespace cachelink::auth {

std::string random_nonce() {
  std::string nonce(kNonceBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(nonce.data()), static_cast<int>(nonce.size())) != 1) {
    throw std::runtime_error("RAND_bytes failed");
  }
  return nonce;
}

std::string proof(const std::string& secret, const char* label, const std::string& first, const std::string& second,
                  uint64_t cluster_id) {
  std::string message = std::string(label) + first + second;
  message.append(reinterpret_cast<const char*>(&cluster_id), sizeof(cluster_id));
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), out, &len);
  return {reinterpret_cast<const char*>(out), len};
}

bool same(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace cachelink::auth
