// Link authentication: challenge-response with HMAC-SHA256 over both sides' nonces; the shared secret
// never crosses the wire and a recorded handshake cannot be replayed (fresh nonces every time).
#pragma once

#include <cstdint>
#include <string>

#include "status.h"

namespace cachelink::auth {

constexpr size_t kNonceBytes = 16;

/// kNonceBytes cryptographically random bytes (OpenSSL RAND_bytes) into `out`; kFailed when the generator
/// has none to give (never throws, like the rest of the core).
Status random_nonce(std::string* out);
/// HMAC-SHA256(secret, label | first | second | cluster_id).
std::string proof(const std::string& secret, const char* label, const std::string& first, const std::string& second,
                  uint64_t cluster_id);
/// Constant-time comparison.
bool same(const std::string& a, const std::string& b);

constexpr const char* kServerLabel = "cachelink-link-server-v1";
constexpr const char* kClientLabel = "cachelink-link-client-v1";

}  // namespace cachelink::auth
