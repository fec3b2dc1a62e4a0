#include "channel.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <cstring>

namespace cachelink::channel {
namespace {

std::string hmac(const std::string& key, const std::string& message) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(message.data()),
       message.size(), out, &len);
  return {reinterpret_cast<const char*>(out), len};
}

/// HKDF-Expand for one 32-byte block (SHA-256 output = key size): T(1) = HMAC(PRK, info | 0x01).
Key expand(const std::string& prk, const std::string& info) {
  std::string block = hmac(prk, info + std::string(1, '\x01'));
  Key key{};
  std::memcpy(key.data(), block.data(), key.size());
  return key;
}

void nonce_of(uint64_t seq, uint8_t out[12]) {
  std::memset(out, 0, 12);
  for (int i = 0; i < 8; ++i) out[4 + i] = static_cast<uint8_t>(seq >> (8 * i));
}

}  // namespace

std::string sha256(const std::string& data) {
  unsigned char out[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), out);
  return {reinterpret_cast<const char*>(out), sizeof(out)};
}

Keys derive(const std::string& secret, const std::string& transcript_hash, const char* stage) {
  const std::string prk = hmac(transcript_hash, secret);  // HKDF-Extract(salt = transcript hash, IKM = secret)
  const std::string label = std::string("cachelink/2 ") + stage;
  Keys keys;
  keys.client_to_server = expand(prk, label + " client->server");
  keys.server_to_client = expand(prk, label + " server->client");
  return keys;
}

struct Direction::Ctx {
  EVP_CIPHER_CTX* enc = EVP_CIPHER_CTX_new();
  EVP_CIPHER_CTX* dec = EVP_CIPHER_CTX_new();
  Ctx() = default;
  Ctx(const Ctx&) = delete;
  Ctx& operator=(const Ctx&) = delete;
  ~Ctx() {
    EVP_CIPHER_CTX_free(enc);
    EVP_CIPHER_CTX_free(dec);
  }
};

Direction::Direction() = default;
Direction::~Direction() = default;
Direction::Direction(Direction&&) noexcept = default;
Direction& Direction::operator=(Direction&&) noexcept = default;

void Direction::reset(Mode mode, const Key& key) {
  mode_ = mode;
  seq_ = 0;
  if (mode == Mode::kNone) {
    ctx_.reset();
    return;
  }
  if (!ctx_) ctx_ = std::make_unique<Ctx>();
  // The key schedule is expanded once here; every record only sets its nonce.
  EVP_EncryptInit_ex(ctx_->enc, EVP_aes_256_gcm(), nullptr, key.data(), nullptr);
  EVP_DecryptInit_ex(ctx_->dec, EVP_aes_256_gcm(), nullptr, key.data(), nullptr);
}

Status Direction::seal(const uint8_t* aad, size_t aad_len, const std::vector<iovec>& in, uint8_t* out, uint8_t* tag) {
  if (!ctx_) return {Code::kFailed, "sealing on a channel without a key"};
  uint8_t nonce[12];
  nonce_of(seq_++, nonce);
  EVP_CIPHER_CTX* c = ctx_->enc;
  int len = 0;
  bool ok = EVP_EncryptInit_ex(c, nullptr, nullptr, nullptr, nonce) == 1;
  if (aad_len > 0) ok = ok && EVP_EncryptUpdate(c, nullptr, &len, aad, static_cast<int>(aad_len)) == 1;
  for (const iovec& v : in) {
    if (v.iov_len == 0) continue;
    const auto* p = static_cast<const uint8_t*>(v.iov_base);
    if (mode_ == Mode::kMac) {
      ok = ok && EVP_EncryptUpdate(c, nullptr, &len, p, static_cast<int>(v.iov_len)) == 1;
    } else {
      ok = ok && EVP_EncryptUpdate(c, out, &len, p, static_cast<int>(v.iov_len)) == 1;
      out += len;
    }
  }
  ok = ok && EVP_EncryptFinal_ex(c, out, &len) == 1;
  ok = ok && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTagBytes), tag) == 1;
  if (!ok) return {Code::kFailed, "AES-GCM failed to seal a frame"};
  return Status::Ok();
}

bool Direction::open(const uint8_t* aad, size_t aad_len, uint8_t* data, size_t len, const uint8_t* tag) {
  if (!ctx_) return false;
  uint8_t nonce[12];
  nonce_of(seq_++, nonce);
  EVP_CIPHER_CTX* c = ctx_->dec;
  int n = 0;
  uint8_t expected[kTagBytes];
  std::memcpy(expected, tag, kTagBytes);
  bool ok = EVP_DecryptInit_ex(c, nullptr, nullptr, nullptr, nonce) == 1;
  if (aad_len > 0) ok = ok && EVP_DecryptUpdate(c, nullptr, &n, aad, static_cast<int>(aad_len)) == 1;
  if (len > 0) {
    ok = ok && (mode_ == Mode::kMac ? EVP_DecryptUpdate(c, nullptr, &n, data, static_cast<int>(len))
                                    : EVP_DecryptUpdate(c, data, &n, data, static_cast<int>(len))) == 1;
  }
  ok = ok && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTagBytes), expected) == 1;
  uint8_t sink[16];
  ok = ok && EVP_DecryptFinal_ex(c, sink, &n) == 1;
  return ok;
}

}  // namespace cachelink::channel
