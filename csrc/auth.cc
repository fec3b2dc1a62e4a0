#include "auth.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <utility>

namespace cachelink::auth {

Status random_nonce(std::string* out) {
  std::string nonce(kNonceBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(nonce.data()), static_cast<int>(nonce.size())) != 1) {
    char reason[256] = "unknown error";
    const unsigned long error = ERR_get_error();
    if (error != 0) ERR_error_string_n(error, reason, sizeof(reason));
    return {Code::kFailed, std::string("no random bytes for an authentication nonce (RAND_bytes: ") + reason + ")"};
  }
  *out = std::move(nonce);
  return Status::Ok();
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
