#include "ghash.h"

#include <immintrin.h>
#include <openssl/crypto.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

// Every function that uses the wide instructions carries this target; callers check Ghash::supported() first.
#define CL_GHASH_TARGET __attribute__((target("avx2,avx512f,avx512bw,avx512vl,vpclmulqdq,pclmul,ssse3,sse4.1")))

namespace cachelink::channel {
namespace {

// The blocks are byte-reflected on load (the field's bit order is reversed against the integer's), multiplied
// carry-less into 256 bits, shifted left by one and reduced modulo x^128 + x^7 + x^2 + x + 1 (Gueron and
// Kounavis, "Intel Carry-Less Multiplication Instruction and its Usage for Computing the GCM Mode", 2010).

CL_GHASH_TARGET inline __m128i reflect(__m128i v) {
  return _mm_shuffle_epi8(v, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

CL_GHASH_TARGET inline __m128i load(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

CL_GHASH_TARGET inline void store(uint8_t* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }

/// The 256-bit product lo + mid * 2^64 + hi * 2^128 (of reflected operands), reduced to 128 bits.
CL_GHASH_TARGET inline __m128i reduce(__m128i lo, __m128i mid, __m128i hi) {
  __m128i low = _mm_xor_si128(lo, _mm_slli_si128(mid, 8));
  __m128i high = _mm_xor_si128(hi, _mm_srli_si128(mid, 8));
  // Shift the 256 bits left by one.
  __m128i carry_low = _mm_srli_epi32(low, 31);
  __m128i carry_high = _mm_srli_epi32(high, 31);
  low = _mm_slli_epi32(low, 1);
  high = _mm_slli_epi32(high, 1);
  const __m128i across = _mm_srli_si128(carry_low, 12);
  carry_high = _mm_slli_si128(carry_high, 4);
  carry_low = _mm_slli_si128(carry_low, 4);
  low = _mm_or_si128(low, carry_low);
  high = _mm_or_si128(_mm_or_si128(high, carry_high), across);
  // Reduce: first phase.
  __m128i a = _mm_xor_si128(_mm_xor_si128(_mm_slli_epi32(low, 31), _mm_slli_epi32(low, 30)), _mm_slli_epi32(low, 25));
  const __m128i b = _mm_srli_si128(a, 4);
  a = _mm_slli_si128(a, 12);
  low = _mm_xor_si128(low, a);
  // Second phase.
  __m128i c = _mm_xor_si128(_mm_xor_si128(_mm_srli_epi32(low, 1), _mm_srli_epi32(low, 2)), _mm_srli_epi32(low, 7));
  c = _mm_xor_si128(c, b);
  low = _mm_xor_si128(low, c);
  return _mm_xor_si128(high, low);
}

CL_GHASH_TARGET inline __m128i multiply(__m128i a, __m128i b) {
  const __m128i lo = _mm_clmulepi64_si128(a, b, 0x00);
  const __m128i hi = _mm_clmulepi64_si128(a, b, 0x11);
  const __m128i mid = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x10), _mm_clmulepi64_si128(a, b, 0x01));
  return reduce(lo, mid, hi);
}

/// XOR of the four 128-bit lanes.
CL_GHASH_TARGET inline __m128i fold(__m512i v) {
  const __m256i h =
      _mm256_xor_si256(_mm512_maskz_extracti64x4_epi64(0xFF, v, 0), _mm512_maskz_extracti64x4_epi64(0xFF, v, 1));
  return _mm_xor_si128(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

constexpr size_t kStep = Ghash::kLanes * 4 * Ghash::kBlock;  // bytes between reductions
constexpr size_t kPrefetch = 8 * kStep;  // how far ahead loads are asked for (a prefetch never faults)

/// Absorbs `steps` runs of 4 kLanes blocks: X = (X + b0) H^n + b1 H^(n-1) + ... + b(n-1) H, one reduction each.
CL_GHASH_TARGET void absorb_wide(__m128i* x, const uint8_t (*powers)[64], const uint8_t* p, size_t steps) {
  const __m512i mask =
      _mm512_maskz_broadcast_i32x4(0xFFFF, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  __m512i keys[Ghash::kLanes];
  __m512i cross[Ghash::kLanes];  // hi ^ lo of each key in both halves (Karatsuba)
#pragma GCC unroll 16
  for (size_t z = 0; z < Ghash::kLanes; ++z) {
    keys[z] = _mm512_loadu_si512(powers[z]);
    cross[z] = _mm512_xor_si512(keys[z], _mm512_maskz_shuffle_epi32(0xFFFF, keys[z], _MM_PERM_BADC));
  }
  __m128i acc = *x;
  for (size_t s = 0; s < steps; ++s, p += kStep) {
    __m512i lo = _mm512_setzero_si512();
    __m512i hi = lo;
    __m512i mid = lo;
#pragma GCC unroll 16  // the keys stay in registers
    for (size_t z = 0; z < Ghash::kLanes; ++z) {
      // Asked for well ahead: a sender hashes pool memory that is not in the cache yet (loads stalled).
      _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) + kPrefetch + 64 * z), _MM_HINT_T0);
      __m512i d = _mm512_shuffle_epi8(_mm512_loadu_si512(p + 64 * z), mask);
      if (z == 0) d = _mm512_xor_si512(d, _mm512_inserti32x4(_mm512_setzero_si512(), acc, 0));
      const __m512i dx = _mm512_xor_si512(d, _mm512_maskz_shuffle_epi32(0xFFFF, d, _MM_PERM_BADC));
      lo = _mm512_xor_si512(lo, _mm512_clmulepi64_epi128(d, keys[z], 0x00));
      hi = _mm512_xor_si512(hi, _mm512_clmulepi64_epi128(d, keys[z], 0x11));
      mid = _mm512_xor_si512(mid, _mm512_clmulepi64_epi128(dx, cross[z], 0x00));
    }
    mid = _mm512_ternarylogic_epi64(mid, lo, hi, 0x96);  // Karatsuba: (dh + dl)(kh + kl) + lo + hi
    acc = reduce(fold(lo), fold(mid), fold(hi));
  }
  *x = acc;
}

CL_GHASH_TARGET void absorb(uint8_t x_bytes[16], const uint8_t (*powers)[64], const uint8_t h_bytes[16],
                            const uint8_t* p, size_t blocks) {
  __m128i x = load(x_bytes);
  const size_t steps = blocks * Ghash::kBlock / kStep;
  if (steps > 0) absorb_wide(&x, powers, p, steps);
  p += steps * kStep;
  blocks -= steps * kStep / Ghash::kBlock;
  const __m128i h = load(h_bytes);
  for (size_t i = 0; i < blocks; ++i) x = multiply(_mm_xor_si128(x, reflect(load(p + Ghash::kBlock * i))), h);
  store(x_bytes, x);
}

CL_GHASH_TARGET void make_powers(const uint8_t h[16], uint8_t (*powers)[64], uint8_t h_bytes[16]) {
  constexpr size_t kCount = 4 * Ghash::kLanes;
  const __m128i h1 = reflect(load(h));
  __m128i power[kCount + 1];
  power[1] = h1;
  for (size_t k = 2; k <= kCount; ++k) power[k] = multiply(power[k - 1], h1);
  // Register z, lane l (the l-th block of its four) multiplies H^(kCount - 4z - l).
  for (size_t z = 0; z < Ghash::kLanes; ++z) {
    for (size_t l = 0; l < 4; ++l) store(powers[z] + Ghash::kBlock * l, power[kCount - 4 * z - l]);
  }
  store(h_bytes, h1);
  OPENSSL_cleanse(static_cast<void*>(power), sizeof(power));
}

CL_GHASH_TARGET void unreflect(const uint8_t x[16], uint8_t out[16]) { store(out, reflect(load(x))); }

}  // namespace

Ghash::~Ghash() {
  OPENSSL_cleanse(powers_, sizeof(powers_));
  OPENSSL_cleanse(h_, sizeof(h_));
  OPENSSL_cleanse(x_, sizeof(x_));
  OPENSSL_cleanse(partial_, sizeof(partial_));
}

bool Ghash::supported() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("vpclmulqdq") &&
           __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("avx2");
  }();
  return ok;
}

void Ghash::init(const uint8_t h[kBlock]) {
  make_powers(h, powers_, h_);
  start();
}

void Ghash::start() {
  std::memset(x_, 0, sizeof(x_));
  buffered_ = 0;
}

void Ghash::update(const uint8_t* data, size_t len) {
  if (len == 0) return;
  if (buffered_ > 0) {
    const size_t take = std::min(len, kBlock - buffered_);
    std::memcpy(partial_ + buffered_, data, take);
    buffered_ += take;
    data += take;
    len -= take;
    if (buffered_ < kBlock) return;
    absorb(x_, powers_, h_, partial_, 1);
    buffered_ = 0;
  }
  const size_t blocks = len / kBlock;
  if (blocks > 0) absorb(x_, powers_, h_, data, blocks);
  data += blocks * kBlock;
  len -= blocks * kBlock;
  if (len > 0) {
    std::memcpy(partial_, data, len);
    buffered_ = len;
  }
}

void Ghash::pad() {
  if (buffered_ == 0) return;
  std::memset(partial_ + buffered_, 0, kBlock - buffered_);
  absorb(x_, powers_, h_, partial_, 1);
  buffered_ = 0;
}

void Ghash::finish(uint64_t aad_bytes, uint64_t text_bytes, uint8_t out[kBlock]) {
  pad();
  uint8_t lengths[kBlock];
  const uint64_t aad_bits = aad_bytes * 8;
  const uint64_t text_bits = text_bytes * 8;
  for (int i = 0; i < 8; ++i) {
    lengths[7 - i] = static_cast<uint8_t>(aad_bits >> (8 * i));
    lengths[15 - i] = static_cast<uint8_t>(text_bits >> (8 * i));
  }
  absorb(x_, powers_, h_, lengths, 1);
  unreflect(x_, out);
}

}  // namespace cachelink::channel
