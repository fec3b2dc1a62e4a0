#include <gtest/gtest.h>

#include <random>

#include "wire.h"

namespace cachelink::wire {
namespace {

TEST(Wire, HeaderRoundTripAndRejections) {
  Header h;
  h.type = static_cast<uint16_t>(Type::kRead);
  h.payload_len = 123;
  uint8_t buf[kHeaderSize];
  encode_header(h, buf);
  Header out;
  ASSERT_TRUE(decode_header(buf, &out).ok());
  EXPECT_EQ(out.type, h.type);
  EXPECT_EQ(out.payload_len, 123u);

  Header bad = h;
  bad.magic = 0x12345678;
  encode_header(bad, buf);
  EXPECT_FALSE(decode_header(buf, &out).ok());
  bad = h;
  bad.version = 99;
  encode_header(bad, buf);
  EXPECT_NE(decode_header(buf, &out).message().find("version"), std::string::npos);
  bad = h;
  bad.type = 999;
  encode_header(bad, buf);
  EXPECT_FALSE(decode_header(buf, &out).ok());
  bad = h;
  bad.payload_len = uint64_t{1} << 40;
  encode_header(bad, buf);
  EXPECT_FALSE(decode_header(buf, &out).ok()) << "oversized payloads are refused before allocation";
}

TEST(Wire, TransferRequestRoundTrip) {
  TransferRequest r;
  r.ref = {RefKind::kBlocksKey, 1, 2, 3};
  r.extent.tensor_start = 4;
  r.extent.tensor_count = 6;
  r.extent.unit = Unit::kBlocks;
  r.extent.block_bytes = 4096;
  r.extent.blocks = {9, 1, 7};
  r.expected_total = 6 * 3 * 4096;
  r.flags = kFlagReleaseKey;
  Writer w;
  encode(w, r);
  Reader rd(w.bytes());
  TransferRequest out;
  ASSERT_TRUE(decode(rd, &out).ok());
  ASSERT_TRUE(rd.finish("request").ok());
  EXPECT_EQ(out.ref.kind, RefKind::kBlocksKey);
  EXPECT_EQ(out.extent.blocks, r.extent.blocks);
  EXPECT_EQ(out.expected_total, r.expected_total);
}

TEST(Wire, TruncatedAndTrailingBytesAreErrors) {
  TransferRequest r;
  r.extent.blocks = {1, 2, 3};
  Writer w;
  encode(w, r);
  auto bytes = w.take();
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    Reader rd(bytes.data(), cut);
    TransferRequest out;
    Status st = decode(rd, &out);
    EXPECT_TRUE(!st.ok() || !rd.finish("x").ok()) << "cut at " << cut;
  }
  bytes.push_back(0);
  Reader rd(bytes);
  TransferRequest out;
  ASSERT_TRUE(decode(rd, &out).ok());
  EXPECT_FALSE(rd.finish("request").ok());
}

// Fuzz the decoder with random and mutated inputs: it must never read out of bounds (run under ASan
// in development) and never accept a list longer than the bytes that carry it.
TEST(Wire, FuzzDecoderNeverOverruns) {
  std::mt19937_64 rng(7);
  TransferRequest seed;
  seed.extent.blocks = {5, 6};
  Writer w;
  encode(w, seed);
  const auto valid = w.take();
  for (int i = 0; i < 200000; ++i) {
    std::vector<uint8_t> input = valid;
    int mutations = 1 + static_cast<int>(rng() % 8);
    for (int m = 0; m < mutations; ++m) {
      switch (rng() % 3) {
        case 0:
          input[rng() % input.size()] = static_cast<uint8_t>(rng());
          break;
        case 1:
          input.resize(rng() % (input.size() + 1));
          break;
        default:
          input.insert(input.begin() + static_cast<long>(rng() % (input.size() + 1)), static_cast<uint8_t>(rng()));
      }
      if (input.empty()) input.push_back(0);
    }
    Reader rd(input);
    TransferRequest out;
    Status st = decode(rd, &out);
    if (st.ok()) {
      ASSERT_LE(out.extent.blocks.size() * sizeof(uint64_t), input.size());
    }
  }
}

}  // namespace
}  // namespace cachelink::wire
