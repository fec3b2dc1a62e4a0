#include "aes_ctr.h"

#include <immintrin.h>
#include <openssl/crypto.h>

#include <cstring>

// Every function that uses the wide instructions carries this target; callers check AesCtr::supported() first.
#define CL_AES_TARGET __attribute__((target("aes,avx2,avx512f,avx512bw,avx512vl,vaes,sse4.1")))

namespace cachelink::channel {
namespace {

CL_AES_TARGET inline __m128i load(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

CL_AES_TARGET inline void store(uint8_t* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }

// AES-256 key expansion with AESKEYGENASSIST (Gueron, "Intel Advanced Encryption Standard (AES) New
// Instructions Set", 2010, figure 28): each step makes the next round key from the two before it.
CL_AES_TARGET inline __m128i spread(__m128i key) {
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  return _mm_xor_si128(key, _mm_slli_si128(key, 4));
}

template <int kRcon>
CL_AES_TARGET inline __m128i even_key(__m128i two_before, __m128i one_before) {
  const __m128i assist = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(one_before, kRcon), 0xff);  // RotWord, SubWord
  return _mm_xor_si128(spread(two_before), assist);
}

CL_AES_TARGET inline __m128i odd_key(__m128i two_before, __m128i one_before) {
  const __m128i assist = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(one_before, 0), 0xaa);  // SubWord only
  return _mm_xor_si128(spread(two_before), assist);
}

CL_AES_TARGET void expand(const uint8_t key[32], uint8_t (*rk)[16]) {
  __m128i k[15];
  k[0] = load(key);
  k[1] = load(key + 16);
  k[2] = even_key<0x01>(k[0], k[1]);
  k[3] = odd_key(k[1], k[2]);
  k[4] = even_key<0x02>(k[2], k[3]);
  k[5] = odd_key(k[3], k[4]);
  k[6] = even_key<0x04>(k[4], k[5]);
  k[7] = odd_key(k[5], k[6]);
  k[8] = even_key<0x08>(k[6], k[7]);
  k[9] = odd_key(k[7], k[8]);
  k[10] = even_key<0x10>(k[8], k[9]);
  k[11] = odd_key(k[9], k[10]);
  k[12] = even_key<0x20>(k[10], k[11]);
  k[13] = odd_key(k[11], k[12]);
  k[14] = even_key<0x40>(k[12], k[13]);
  for (int i = 0; i < 15; ++i) store(rk[i], k[i]);
  OPENSSL_cleanse(static_cast<void*>(k), sizeof(k));
}

CL_AES_TARGET void encrypt_one(const uint8_t (*rk)[16], const uint8_t in[16], uint8_t out[16]) {
  __m128i b = _mm_xor_si128(load(in), load(rk[0]));
  for (int r = 1; r < 14; ++r) b = _mm_aesenc_si128(b, load(rk[r]));
  store(out, _mm_aesenclast_si128(b, load(rk[14])));
}

constexpr size_t kWide = 4;  // 512-bit registers in flight: 16 blocks

/// XORs keystream into `groups` runs of 4 kWide blocks, then `singles` runs of 4 blocks, then (when `spare` is
/// set) writes one more register's keystream there; returns the next counter.
CL_AES_TARGET uint32_t ctr_wide(const uint8_t (*rk)[16], const uint8_t nonce[12], uint32_t counter, const uint8_t* in,
                                uint8_t* out, size_t groups, size_t singles, uint8_t* spare) {
  __m512i keys[15];
#pragma GCC unroll 15
  for (int r = 0; r < 15; ++r) keys[r] = _mm512_maskz_broadcast_i32x4(0xFFFF, load(rk[r]));
  // Counter blocks are kept with the counter little-endian in the last 32-bit word, added to there (wrapping as
  // GCM's inc32 does) and byte-swapped into place as each block is made.
  uint8_t first[16];
  std::memcpy(first, nonce, 12);
  std::memcpy(first + 12, &counter, 4);
  const __m512i order = _mm512_maskz_broadcast_i32x4(
      0xFFFF, _mm_set_epi8(12, 13, 14, 15, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));  // last word big-endian
  __m512i ctr = _mm512_add_epi32(_mm512_maskz_broadcast_i32x4(0xFFFF, load(first)),
                                 _mm512_set_epi32(3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0));
  const __m512i four = _mm512_set_epi32(4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0);
  for (size_t g = 0; g < groups; ++g, in += 64 * kWide, out += 64 * kWide) {
    __m512i b[kWide];  // the loops are unrolled so that these stay in registers
#pragma GCC unroll 4
    for (__m512i& block : b) {
      block = _mm512_xor_si512(_mm512_shuffle_epi8(ctr, order), keys[0]);
      ctr = _mm512_add_epi32(ctr, four);
    }
#pragma GCC unroll 13
    for (int r = 1; r < 14; ++r) {
#pragma GCC unroll 4
      for (__m512i& block : b) block = _mm512_aesenc_epi128(block, keys[r]);
    }
#pragma GCC unroll 4
    for (size_t w = 0; w < kWide; ++w) {
      b[w] = _mm512_aesenclast_epi128(b[w], keys[14]);
      _mm512_storeu_si512(out + 64 * w, _mm512_xor_si512(b[w], _mm512_loadu_si512(in + 64 * w)));
    }
  }
  for (size_t s = 0; s <= singles; ++s) {
    if (s == singles && spare == nullptr) break;
    __m512i b = _mm512_xor_si512(_mm512_shuffle_epi8(ctr, order), keys[0]);
    ctr = _mm512_add_epi32(ctr, four);
#pragma GCC unroll 13
    for (int r = 1; r < 14; ++r) b = _mm512_aesenc_epi128(b, keys[r]);
    b = _mm512_aesenclast_epi128(b, keys[14]);
    if (s == singles) {
      _mm512_storeu_si512(spare, b);
    } else {
      _mm512_storeu_si512(out, _mm512_xor_si512(b, _mm512_loadu_si512(in)));
      in += 64;
      out += 64;
    }
  }
  const uint32_t blocks = static_cast<uint32_t>(groups * 4 * kWide + singles * 4 + (spare != nullptr ? 4 : 0));
  return counter + blocks;
}

}  // namespace

AesCtr::~AesCtr() {
  OPENSSL_cleanse(round_keys_, sizeof(round_keys_));
  OPENSSL_cleanse(spare_, sizeof(spare_));
}

bool AesCtr::supported() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("vaes") && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2");
  }();
  return ok;
}

void AesCtr::init(const uint8_t key[kKeyBytes]) {
  expand(key, round_keys_);
  spare_at_ = kSpare;
}

void AesCtr::encrypt_block(const uint8_t in[kBlock], uint8_t out[kBlock]) const { encrypt_one(round_keys_, in, out); }

void AesCtr::start(const uint8_t nonce[12], uint32_t counter) {
  std::memcpy(nonce_, nonce, sizeof(nonce_));
  counter_ = counter;
  spare_at_ = kSpare;
}

void AesCtr::apply(const uint8_t* in, uint8_t* out, size_t len) {
  while (spare_at_ < kSpare && len > 0) {
    *out++ = *in++ ^ spare_[spare_at_++];
    --len;
  }
  if (len == 0) return;
  const size_t groups = len / (64 * kWide);
  const size_t singles = (len % (64 * kWide)) / 64;
  const size_t rest = len % 64;
  counter_ = ctr_wide(round_keys_, nonce_, counter_, in, out, groups, singles, rest > 0 ? spare_ : nullptr);
  if (rest == 0) return;
  const size_t done = len - rest;
  for (size_t i = 0; i < rest; ++i) out[done + i] = in[done + i] ^ spare_[i];
  spare_at_ = rest;
}

}  // namespace cachelink::channel
