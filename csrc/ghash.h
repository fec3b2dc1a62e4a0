// GHASH, the universal hash of AES-GCM (NIST SP 800-38D, section 6.4), with 512-bit carry-less multiplies.
//
// OpenSSL 3.0 hashes with 128-bit PCLMULQDQ only; on a CPU with VPCLMULQDQ and AVX-512 this one multiplies
// four blocks per instruction (Karatsuba: three multiplies a block) and reduces once per 64 blocks (the
// products by H^64 ... H^1 are summed first), two to three times as fast. It computes exactly GCM's GHASH: the channel
// builds GMAC and AES-GCM from it and AES (OpenSSL), and the unit tests check every tag and ciphertext against
// OpenSSL's own AES-GCM. Constant time: carry-less multiplies, shifts and XORs only, no table and no data-dependent
// branch.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cachelink::channel {

class Ghash {
 public:
  static constexpr size_t kBlock = 16;
  static constexpr size_t kLanes = 16;  // 512-bit registers per step: 16 x 4 blocks between reductions

  Ghash() = default;
  ~Ghash();
  Ghash(const Ghash&) = delete;
  Ghash& operator=(const Ghash&) = delete;

  /// True when this CPU has what the hash needs (AVX-512 F/BW/VL, VPCLMULQDQ, PCLMULQDQ); checked once.
  static bool supported();

  /// Keys the hash with H = AES_K(0^128) and starts a message.
  void init(const uint8_t h[kBlock]);
  /// Starts a message (the key stays).
  void start();
  /// Absorbs bytes; a partial block waits for the next call.
  void update(const uint8_t* data, size_t len);
  /// Zero-pads what was absorbed to a block boundary (GCM pads the additional data, then the ciphertext).
  void pad();
  /// Pads, absorbs the lengths block (additional data and text lengths in bytes) and writes the hash.
  void finish(uint64_t aad_bytes, uint64_t text_bytes, uint8_t out[kBlock]);

 private:
  uint8_t powers_[kLanes][64]{};  // H^(4 kLanes) ... H^1, byte-reflected, four to a 512-bit register
  uint8_t h_[kBlock]{};           // H, byte-reflected
  uint8_t x_[kBlock]{};           // the running hash, byte-reflected
  uint8_t partial_[kBlock]{};
  size_t buffered_ = 0;
};

}  // namespace cachelink::channel
