// AES-256 (FIPS 197) in GCM's counter mode (NIST SP 800-38D: the nonce, then a 32-bit big-endian counter that
// wraps), with VAES: four blocks per instruction, sixteen in flight.
//
// OpenSSL 3.0 encrypts with 128-bit AES-NI only; on a CPU with VAES and AVX-512 this is about twice as fast.
// Together with ghash.h it makes the channel's AES-256-GCM, bit for bit the same as OpenSSL's (the unit tests
// compare them, and this cipher with FIPS 197's example). Constant time: AES instructions, no table.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cachelink::channel {

class AesCtr {
 public:
  static constexpr size_t kBlock = 16;
  static constexpr size_t kKeyBytes = 32;

  AesCtr() = default;
  ~AesCtr();
  AesCtr(const AesCtr&) = delete;
  AesCtr& operator=(const AesCtr&) = delete;

  /// True when this CPU has what the cipher needs (AES-NI, VAES, AVX-512 F/BW); checked once.
  static bool supported();

  /// Expands the key.
  void init(const uint8_t key[kKeyBytes]);
  /// E_K(in): one block.
  void encrypt_block(const uint8_t in[kBlock], uint8_t out[kBlock]) const;
  /// Starts the keystream at the counter block `nonce | counter` (the counter big-endian).
  void start(const uint8_t nonce[12], uint32_t counter);
  /// XORs the next `len` bytes of keystream into `in`, writing `out` (may be `in`); the stream continues
  /// where the last call stopped, mid-block included.
  void apply(const uint8_t* in, uint8_t* out, size_t len);

 private:
  static constexpr size_t kSpare = 4 * kBlock;  // keystream of one 512-bit register, of which some is unused
  uint8_t round_keys_[15][kBlock]{};
  uint8_t nonce_[12]{};
  uint32_t counter_ = 0;
  uint8_t spare_[kSpare]{};  // keystream made but not used yet
  size_t spare_at_ = kSpare;
};

}  // namespace cachelink::channel
