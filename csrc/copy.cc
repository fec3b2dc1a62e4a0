#include "copy.h"

#include <algorithm>
#include <cstring>
#include <thread>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace cachelink {
namespace {

// Copies far larger than the caches gain from non-temporal stores: they skip reading the destination
// lines first (no read-for-ownership) and leave the caches to the rest of the process.
constexpr uint64_t kStreamingTotal = 4u << 20;  // transfers at least this big stream ...
constexpr uint64_t kStreamingPiece = 1024;      // ... each piece at least this big

#if defined(__x86_64__)
__attribute__((target("avx2"))) void stream_copy_avx2(uint8_t* dst, const uint8_t* src, uint64_t n) {
  uint64_t head = (32 - (reinterpret_cast<uintptr_t>(dst) & 31)) & 31;
  head = std::min(head, n);
  std::memcpy(dst, src, head);
  dst += head;
  src += head;
  n -= head;
  for (; n >= 128; n -= 128, dst += 128, src += 128) {
    __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32));
    __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 64));
    __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 96));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst), a);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + 32), b);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + 64), c);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + 96), d);
  }
  std::memcpy(dst, src, n);
}

bool has_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2");
  return supported;
}
#endif

void copy_piece(uint8_t* dst, const uint8_t* src, uint64_t n, bool streaming) {
#if defined(__x86_64__)
  if (streaming && n >= kStreamingPiece && has_avx2()) {
    stream_copy_avx2(dst, src, n);
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

void fence_streams() {
#if defined(__x86_64__)
  _mm_sfence();  // make the non-temporal stores visible before the peer is told the copy is done
#endif
}

/// Copies stream bytes [begin, end) of `src` into the same stream positions of `dst`.
void copy_range(const std::vector<Segment>& dst, const std::vector<Segment>& src, uint64_t begin, uint64_t end,
                bool streaming) {
  size_t di = 0;
  size_t si = 0;
  uint64_t doff = begin;
  uint64_t soff = begin;
  while (di < dst.size() && doff >= dst[di].len) doff -= dst[di++].len;
  while (si < src.size() && soff >= src[si].len) soff -= src[si++].len;
  uint64_t left = end - begin;
  while (left > 0 && di < dst.size() && si < src.size()) {
    uint64_t n = std::min({left, dst[di].len - doff, src[si].len - soff});
    copy_piece(dst[di].addr + doff, src[si].addr + soff, n, streaming);
    left -= n;
    doff += n;
    soff += n;
    if (doff == dst[di].len) {
      ++di;
      doff = 0;
    }
    if (soff == src[si].len) {
      ++si;
      soff = 0;
    }
  }
  if (streaming) fence_streams();
}

}  // namespace

void copy_segments(const std::vector<Segment>& dst, const std::vector<Segment>& src, uint64_t total, unsigned threads) {
  // Large batches are split by bytes across threads: on two cores a second copier raises bandwidth,
  // below kParallelCopyMin the thread start costs more than it saves.
  threads = std::max(1u, threads);
  const bool streaming = total >= kStreamingTotal;
  if (threads == 1 || total < kParallelCopyMin) {
    copy_range(dst, src, 0, total, streaming);
    return;
  }
  uint64_t share = (total / threads + 4095) / 4096 * 4096;
  std::vector<std::thread> helpers;
  for (unsigned i = 1; i < threads; ++i) {
    uint64_t begin = std::min(total, share * i);
    uint64_t end = std::min(total, share * (i + 1));
    if (begin < end) helpers.emplace_back(copy_range, std::cref(dst), std::cref(src), begin, end, streaming);
  }
  copy_range(dst, src, 0, std::min(total, share), streaming);
  for (auto& t : helpers) t.join();
}

}  // namespace cachelink
