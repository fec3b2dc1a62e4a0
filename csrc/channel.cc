#include "channel.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cstring>

#include "aes_ctr.h"
#include "ghash.h"

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

namespace {

constexpr size_t kChunk = 16u << 10;  // encrypted bytes are hashed while still in the L1 cache
// GCM's limit on one message: 2^32 - 2 blocks (its 32-bit counter from J0 + 1). Records and frames are far smaller.
constexpr uint64_t kMaxRecord = ((uint64_t{1} << 32) - 2) * 16;

uint64_t total_of(const std::vector<iovec>& v) {
  uint64_t total = 0;
  for (const iovec& p : v) total += p.iov_len;
  return total;
}

}  // namespace

struct Direction::Ctx {
  EVP_CIPHER_CTX* enc = nullptr;  // OpenSSL AES-256-GCM (Backend::kOpenSsl, or no wide GHASH)
  EVP_CIPHER_CTX* dec = nullptr;
  AesCtr aes;  // the wide path: H = E_K(0), the tag mask E_K(J0), the keystream from J0 + 1
  Ghash ghash;
  bool wide = false;
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

void Direction::reset(Mode mode, const Key& key, Backend backend) {
  mode_ = mode;
  seq_ = 0;
  ctx_.reset();  // a fresh context per key: nothing of the old key stays in a reused one
  if (mode == Mode::kNone) return;
  ctx_ = std::make_unique<Ctx>();
  Ctx& c = *ctx_;
  c.wide = backend == Backend::kAuto && Ghash::supported() && AesCtr::supported();
  // The key schedule is expanded once here; every record only sets its nonce.
  if (!c.wide) {
    c.enc = EVP_CIPHER_CTX_new();
    c.dec = EVP_CIPHER_CTX_new();
    EVP_EncryptInit_ex(c.enc, EVP_aes_256_gcm(), nullptr, key.data(), nullptr);
    EVP_DecryptInit_ex(c.dec, EVP_aes_256_gcm(), nullptr, key.data(), nullptr);
    return;
  }
  c.aes.init(key.data());
  const uint8_t zero[Ghash::kBlock] = {};
  uint8_t h[Ghash::kBlock] = {};
  c.aes.encrypt_block(zero, h);
  c.ghash.init(h);
  OPENSSL_cleanse(h, sizeof(h));
}

bool Direction::wide() const { return ctx_ && ctx_->wide; }

Status Direction::seal(const uint8_t* aad, size_t aad_len, const std::vector<iovec>& in, uint8_t* out, uint8_t* tag) {
  if (!ctx_) return {Code::kFailed, "sealing on a channel without a key"};
  uint8_t nonce[12];
  nonce_of(seq_++, nonce);
  if (ctx_->wide) {
    if (!seal_wide(nonce, aad, aad_len, in, out, tag)) return {Code::kFailed, "AES-GCM failed to seal a frame"};
    return Status::Ok();
  }
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

// NOLINTNEXTLINE(readability-non-const-parameter): `data` is decrypted in place (through the iovec)
bool Direction::open(const uint8_t* aad, size_t aad_len, uint8_t* data, size_t len, const uint8_t* tag) {
  return open(aad, aad_len, std::vector<iovec>{{data, len}}, tag);
}

bool Direction::open(const uint8_t* aad, size_t aad_len, const std::vector<iovec>& data, const uint8_t* tag) {
  if (!ctx_) return false;
  uint8_t nonce[12];
  nonce_of(seq_++, nonce);
  if (ctx_->wide) return open_wide(nonce, aad, aad_len, data, tag);
  EVP_CIPHER_CTX* c = ctx_->dec;
  int n = 0;
  uint8_t expected[kTagBytes];
  std::memcpy(expected, tag, kTagBytes);
  bool ok = EVP_DecryptInit_ex(c, nullptr, nullptr, nullptr, nonce) == 1;
  if (aad_len > 0) ok = ok && EVP_DecryptUpdate(c, nullptr, &n, aad, static_cast<int>(aad_len)) == 1;
  for (const iovec& v : data) {
    if (v.iov_len == 0) continue;
    auto* p = static_cast<uint8_t*>(v.iov_base);
    const int len = static_cast<int>(v.iov_len);
    ok = ok &&
         (mode_ == Mode::kMac ? EVP_DecryptUpdate(c, nullptr, &n, p, len) : EVP_DecryptUpdate(c, p, &n, p, len)) == 1;
  }
  ok = ok && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTagBytes), expected) == 1;
  uint8_t sink[16];
  ok = ok && EVP_DecryptFinal_ex(c, sink, &n) == 1;
  return ok;
}

namespace {

/// E_K(J0), J0 = nonce | 0x00000001: the mask GCM puts on the GHASH result to make the tag.
void tag_mask(const AesCtr& aes, const uint8_t nonce[12], uint8_t mask[Ghash::kBlock]) {
  uint8_t j0[Ghash::kBlock] = {};
  std::memcpy(j0, nonce, 12);
  j0[15] = 1;
  aes.encrypt_block(j0, mask);
}

}  // namespace

bool Direction::seal_wide(const uint8_t nonce[12], const uint8_t* aad, size_t aad_len, const std::vector<iovec>& in,
                          uint8_t* out, uint8_t* tag) {
  Ctx& c = *ctx_;
  const uint64_t total = total_of(in);
  if (total > kMaxRecord) return false;
  uint8_t mask[Ghash::kBlock];
  tag_mask(c.aes, nonce, mask);
  c.ghash.start();
  if (aad_len > 0) c.ghash.update(aad, aad_len);
  if (mode_ == Mode::kMac) {  // GMAC: the bytes are more additional data
    for (const iovec& v : in) c.ghash.update(static_cast<const uint8_t*>(v.iov_base), v.iov_len);
    c.ghash.finish(aad_len + total, 0, tag);
  } else {
    c.ghash.pad();
    c.aes.start(nonce, 2);  // the text's keystream starts at J0 + 1
    for (const iovec& v : in) {
      const auto* p = static_cast<const uint8_t*>(v.iov_base);
      for (size_t at = 0; at < v.iov_len; at += kChunk) {
        const size_t n = std::min(kChunk, v.iov_len - at);
        c.aes.apply(p + at, out, n);
        c.ghash.update(out, n);
        out += n;
      }
    }
    c.ghash.finish(aad_len, total, tag);
  }
  for (size_t i = 0; i < kTagBytes; ++i) tag[i] ^= mask[i];
  return true;
}

bool Direction::open_wide(const uint8_t nonce[12], const uint8_t* aad, size_t aad_len, const std::vector<iovec>& data,
                          const uint8_t* tag) {
  Ctx& c = *ctx_;
  const uint64_t total = total_of(data);
  if (total > kMaxRecord) return false;
  uint8_t expected[kTagBytes];
  tag_mask(c.aes, nonce, expected);
  c.ghash.start();
  if (aad_len > 0) c.ghash.update(aad, aad_len);
  uint8_t hash[kTagBytes];
  if (mode_ == Mode::kMac) {
    for (const iovec& v : data) c.ghash.update(static_cast<const uint8_t*>(v.iov_base), v.iov_len);
    c.ghash.finish(aad_len + total, 0, hash);
  } else {
    c.ghash.pad();
    c.aes.start(nonce, 2);
    for (const iovec& v : data) {
      auto* p = static_cast<uint8_t*>(v.iov_base);
      for (size_t at = 0; at < v.iov_len; at += kChunk) {
        const size_t n = std::min(kChunk, v.iov_len - at);
        c.ghash.update(p + at, n);  // the ciphertext is hashed, then decrypted where it lies
        c.aes.apply(p + at, p + at, n);
      }
    }
    c.ghash.finish(aad_len, total, hash);
  }
  for (size_t i = 0; i < kTagBytes; ++i) expected[i] ^= hash[i];
  return CRYPTO_memcmp(expected, tag, kTagBytes) == 0;
}

}  // namespace cachelink::channel
