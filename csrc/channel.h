// The authenticated channel of a link (protocol 2): the key schedule and the sealing of frames and bytes.
//
// Key schedule. Both ends hash the handshake transcript (SHA-256) and run HKDF-SHA256 with the link secret as
// the input key and the transcript hash as the salt. The first hash covers HELLO and HELLO_ACK (protocol
// versions, both cluster ids, both nonces, the secret and encryption flags): it keys AUTH and SESSION, the two
// sealed frames that carry each side's role, host id, incarnation and pool list. The traffic keys then come
// from the hash of the whole transcript (HELLO, HELLO_ACK, AUTH, SESSION), so a rewritten field anywhere in
// the handshake leaves the two ends with different keys and the next frame fails to open. One key per
// direction, so a frame reflected back to its sender never opens either.
//
// Sealing. AES-256-GCM with a 96-bit nonce made of the direction's sequence number (implicit: never sent),
// incremented on every record. Encryption mode encrypts; authentication mode is GMAC (AES-GCM with all the bytes
// as additional data, no ciphertext). A replayed, reordered, injected, dropped or rewritten record is opened with
// the wrong sequence number or bytes and fails. Bulk data travels as records of at most kRecordBytes, each with
// its own tag.
//
// Two implementations of the same AES-GCM, bit for bit: OpenSSL's EVP AES-256-GCM, and, on CPUs with VAES,
// VPCLMULQDQ and AVX-512, GCM assembled from the wide AES-256 counter mode of aes_ctr.h (the tag mask E_K(J0),
// the keystream from J0 + 1) and the wide GHASH of ghash.h: two to three times as fast for GMAC, about twice
// for encryption. The unit tests seal with one and open with the other, and compare both with known answers.
#pragma once

#include <sys/uio.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "status.h"

namespace cachelink::channel {

enum class Mode : uint8_t {
  kNone = 0,  // no link secret: plain frames, as protocol 1 (no per-frame protection)
  kMac = 1,   // GMAC: every frame and byte authenticated, sent in clear
  kAead = 2,  // AES-256-GCM: authenticated and encrypted
};

constexpr size_t kKeyBytes = 32;
constexpr size_t kTagBytes = 16;
constexpr uint64_t kRecordBytes = 256u << 10;  // bulk record; one bounce buffer of this size per receiver

using Key = std::array<uint8_t, kKeyBytes>;

/// Which AES-GCM implementation a direction uses (the same algorithm and bytes either way).
enum class Backend : uint8_t {
  kAuto = 0,     // the wide AES and GHASH where the CPU has them, else OpenSSL's AES-GCM
  kOpenSsl = 1,  // OpenSSL's AES-GCM only (tests compare the two)
};

struct Keys {
  Key client_to_server{};
  Key server_to_client{};
};

/// SHA-256 of `data`.
std::string sha256(const std::string& data);
/// HKDF-SHA256 (RFC 5869) of the link secret salted with a transcript hash: one key per direction, each
/// labelled with `stage` ("handshake" or "traffic"). Never fails for a non-empty secret.
Keys derive(const std::string& secret, const std::string& transcript_hash, const char* stage);

/// One direction of a channel: a key, a mode and the next sequence number.
class Direction {
 public:
  Direction();
  ~Direction();
  Direction(Direction&&) noexcept;
  Direction& operator=(Direction&&) noexcept;
  Direction(const Direction&) = delete;
  Direction& operator=(const Direction&) = delete;

  /// (Re)keys the direction and restarts its sequence at 0.
  void reset(Mode mode, const Key& key, Backend backend = Backend::kAuto);
  Mode mode() const { return mode_; }
  uint64_t sequence() const { return seq_; }

  /// Seals one record: `aad` is authenticated, `in` authenticated (kMac) or encrypted into `out` (kAead; `out`
  /// holds the sum of the lengths of `in`). Writes the tag. Consumes one sequence number.
  Status seal(const uint8_t* aad, size_t aad_len, const std::vector<iovec>& in, uint8_t* out, uint8_t* tag);
  /// Opens one record in place: checks `aad` and `data` against `tag` (kMac) or decrypts `data` (kAead).
  /// False when anything was changed, replayed, reordered or injected. Consumes one sequence number.
  bool open(const uint8_t* aad, size_t aad_len, uint8_t* data, size_t len, const uint8_t* tag);
  /// The same for a record scattered over `data` (in order), opened where it lies.
  bool open(const uint8_t* aad, size_t aad_len, const std::vector<iovec>& data, const uint8_t* tag);
  /// True when this direction uses the wide AES and GHASH (Backend::kAuto on a CPU that has them).
  bool wide() const;

 private:
  struct Ctx;
  bool seal_wide(const uint8_t nonce[12], const uint8_t* aad, size_t aad_len, const std::vector<iovec>& in,
                 uint8_t* out, uint8_t* tag);
  bool open_wide(const uint8_t nonce[12], const uint8_t* aad, size_t aad_len, const std::vector<iovec>& data,
                 const uint8_t* tag);
  Mode mode_ = Mode::kNone;
  uint64_t seq_ = 0;
  std::unique_ptr<Ctx> ctx_;
};

/// Both directions of one connection.
struct Channel {
  Direction send;
  Direction recv;
  Mode mode() const { return send.mode(); }
  /// Keys the channel for one end: `client` picks which derived key sends.
  void key(Mode mode, const Keys& keys, bool client) {
    send.reset(mode, client ? keys.client_to_server : keys.server_to_client);
    recv.reset(mode, client ? keys.server_to_client : keys.client_to_server);
  }
};

}  // namespace cachelink::channel
