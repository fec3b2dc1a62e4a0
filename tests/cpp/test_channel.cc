#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "aes_ctr.h"
#include "channel.h"
#include "ghash.h"

namespace cachelink::channel {
namespace {

struct Sealed {
  std::vector<uint8_t> bytes;  // ciphertext (kAead) or the plaintext as sent (kMac)
  std::vector<uint8_t> tag = std::vector<uint8_t>(kTagBytes);
};

Sealed seal(Direction& d, const std::string& aad, const std::string& text) {
  Sealed out;
  std::vector<uint8_t> plain(text.begin(), text.end());
  out.bytes.resize(plain.size());
  std::vector<iovec> in{{plain.data(), plain.size()}};
  EXPECT_TRUE(
      d.seal(reinterpret_cast<const uint8_t*>(aad.data()), aad.size(), in, out.bytes.data(), out.tag.data()).ok());
  if (d.mode() == Mode::kMac) out.bytes = plain;
  return out;
}

bool open(Direction& d, const std::string& aad, Sealed s, std::string* text = nullptr) {
  bool ok =
      d.open(reinterpret_cast<const uint8_t*>(aad.data()), aad.size(), s.bytes.data(), s.bytes.size(), s.tag.data());
  if (text != nullptr) text->assign(s.bytes.begin(), s.bytes.end());
  return ok;
}

/// A sender and a receiver keyed alike, as both ends of one direction of a link.
struct Pair {
  Direction tx;
  Direction rx;
  explicit Pair(Mode mode, const std::string& secret = "secret", Backend backend = Backend::kAuto) {
    Keys keys = derive(secret, sha256("transcript"), "traffic");
    tx.reset(mode, keys.client_to_server, backend);
    rx.reset(mode, keys.client_to_server, backend);
  }
  Pair(Mode mode, Backend backend) : Pair(mode, "secret", backend) {}
};

TEST(KeySchedule, DependsOnSecretTranscriptAndStage) {
  const Keys base = derive("secret", sha256("transcript"), "traffic");
  EXPECT_EQ(base.client_to_server, derive("secret", sha256("transcript"), "traffic").client_to_server);
  EXPECT_NE(base.client_to_server, base.server_to_client);  // one key per direction: no reflection
  EXPECT_NE(base.client_to_server, derive("secreT", sha256("transcript"), "traffic").client_to_server);
  EXPECT_NE(base.client_to_server, derive("secret", sha256("transcripT"), "traffic").client_to_server);
  EXPECT_NE(base.client_to_server, derive("secret", sha256("transcript"), "handshake").client_to_server);
  EXPECT_EQ(sha256("").size(), 32u);
}

/// Every property below holds for both implementations of AES-GCM (OpenSSL's, and the wide GHASH).
class Modes : public ::testing::TestWithParam<std::tuple<Mode, Backend>> {
 protected:
  Mode mode() const { return std::get<0>(GetParam()); }
  Backend backend() const { return std::get<1>(GetParam()); }
};

TEST_P(Modes, RoundTrip) {
  Pair p(mode(), backend());
  for (int i = 0; i < 3; ++i) {
    Sealed s = seal(p.tx, "header" + std::to_string(i), "payload bytes");
    std::string text;
    ASSERT_TRUE(open(p.rx, "header" + std::to_string(i), s, &text));
    EXPECT_EQ(text, "payload bytes");
  }
  EXPECT_EQ(p.tx.sequence(), 3u);
  EXPECT_EQ(p.rx.sequence(), 3u);
}

TEST_P(Modes, EncryptionHidesTheBytesAndMacLeavesThem) {
  Pair p(mode(), backend());
  Sealed s = seal(p.tx, "h", "a prompt's KV cache");
  const std::string wire(s.bytes.begin(), s.bytes.end());
  EXPECT_EQ(wire == "a prompt's KV cache", mode() == Mode::kMac);
}

TEST_P(Modes, TamperedPayloadHeaderOrTagFails) {
  for (int what = 0; what < 3; ++what) {
    Pair p(mode(), backend());
    Sealed s = seal(p.tx, "header", "payload");
    std::string aad = "header";
    if (what == 0) s.bytes[3] ^= 1;
    if (what == 1) aad[0] ^= 1;
    if (what == 2) s.tag[15] ^= 0x80;
    EXPECT_FALSE(open(p.rx, aad, s)) << "case " << what;
  }
}

TEST_P(Modes, ReplayFails) {
  Pair p(mode(), backend());
  Sealed s = seal(p.tx, "h", "write 1");
  ASSERT_TRUE(open(p.rx, "h", s));
  EXPECT_FALSE(open(p.rx, "h", s));  // the same record again: the receiver expects the next sequence number
}

TEST_P(Modes, ReorderFails) {
  Pair p(mode(), backend());
  Sealed first = seal(p.tx, "h", "first");
  Sealed second = seal(p.tx, "h", "second");
  EXPECT_FALSE(open(p.rx, "h", second));
}

TEST_P(Modes, DroppedRecordBreaksTheRest) {
  Pair p(mode(), backend());
  (void)seal(p.tx, "h", "dropped on the way");
  Sealed next = seal(p.tx, "h", "next");
  EXPECT_FALSE(open(p.rx, "h", next));
}

TEST_P(Modes, InjectedOrWrongKeyFails) {
  Pair p(mode(), backend());
  Pair attacker(mode(), "guessed", backend());
  EXPECT_FALSE(open(p.rx, "h", seal(attacker.tx, "h", "injected")));
  Sealed forged;
  forged.bytes = {1, 2, 3};
  EXPECT_FALSE(open(p.rx, "h", forged));  // an all-zero tag
}

TEST_P(Modes, ReflectionFails) {
  // A record sealed client->server never opens as server->client.
  Keys keys = derive("secret", sha256("t"), "traffic");
  Direction tx;
  Direction rx;
  tx.reset(mode(), keys.client_to_server, backend());
  rx.reset(mode(), keys.server_to_client, backend());
  EXPECT_FALSE(open(rx, "h", seal(tx, "h", "reflected")));
}

TEST_P(Modes, ScatteredInputSealsLikeContiguous) {
  Pair a(mode(), backend());
  Pair b(mode(), backend());
  std::string left = "scattered ";
  std::string right = "segments";
  std::vector<uint8_t> out((left + right).size());
  std::vector<uint8_t> tag(kTagBytes);
  std::vector<iovec> in{{left.data(), left.size()}, {right.data(), right.size()}};
  ASSERT_TRUE(a.tx.seal(nullptr, 0, in, out.data(), tag.data()).ok());
  Sealed whole = seal(b.tx, "", left + right);
  EXPECT_EQ(tag, whole.tag);
  if (mode() == Mode::kAead) EXPECT_EQ(out, whole.bytes);
}

TEST_P(Modes, EmptyPayloadStillAuthenticatesTheHeader) {
  Pair p(mode(), backend());
  Sealed s = seal(p.tx, "goodbye header", "");
  EXPECT_TRUE(open(p.rx, "goodbye header", s));
  Sealed t = seal(p.tx, "goodbye header", "");
  EXPECT_FALSE(open(p.rx, "goodbye headeR", t));
}

INSTANTIATE_TEST_SUITE_P(Channel, Modes,
                         ::testing::Combine(::testing::Values(Mode::kMac, Mode::kAead),
                                            ::testing::Values(Backend::kAuto, Backend::kOpenSsl)));

std::vector<uint8_t> unhex(const std::string& hex) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

// AES-256-GCM known answers (McGrew and Viega, "The Galois/Counter Mode of Operation", test cases 13 and 14:
// zero key, zero IV, which is this channel's nonce for sequence number 0).
TEST(Backends, KnownAnswers) {
  for (Backend backend : {Backend::kAuto, Backend::kOpenSsl}) {
    Direction d;
    d.reset(Mode::kAead, Key{}, backend);
    std::vector<uint8_t> tag(kTagBytes);
    ASSERT_TRUE(d.seal(nullptr, 0, {}, nullptr, tag.data()).ok());
    EXPECT_EQ(tag, unhex("530f8afbc74536b9a963b4f1c4cb738b"));
    d.reset(Mode::kAead, Key{}, backend);
    std::vector<uint8_t> zeros(16);
    std::vector<uint8_t> out(16);
    ASSERT_TRUE(d.seal(nullptr, 0, {{zeros.data(), zeros.size()}}, out.data(), tag.data()).ok());
    EXPECT_EQ(out, unhex("cea7403d4d606b6e074ec5d3baf39d18"));
    EXPECT_EQ(tag, unhex("d0d1c8a799996bf0265b98b5d48ab919"));
  }
}

// FIPS 197, appendix C.3: AES-256 of one block.
TEST(AesCtr, KnownAnswer) {
  if (!AesCtr::supported()) GTEST_SKIP() << "no VAES / AVX-512 on this CPU: only OpenSSL's AES-GCM is used";
  AesCtr aes;
  aes.init(unhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f").data());
  std::vector<uint8_t> out(16);
  aes.encrypt_block(unhex("00112233445566778899aabbccddeeff").data(), out.data());
  EXPECT_EQ(out, unhex("8ea2b7ca516745bfeafc49904b496089"));
}

// The keystream is OpenSSL's AES-256-CTR from the same counter block, however the bytes are split across calls.
TEST(AesCtr, MatchesOpenSslCounterMode) {
  if (!AesCtr::supported()) GTEST_SKIP() << "no VAES / AVX-512 on this CPU: only OpenSSL's AES-GCM is used";
  std::mt19937 rng(11);
  std::vector<uint8_t> key(32);
  for (auto& b : key) b = static_cast<uint8_t>(rng());
  std::vector<uint8_t> nonce(12);
  for (auto& b : nonce) b = static_cast<uint8_t>(rng());
  AesCtr aes;
  aes.init(key.data());
  EVP_CIPHER_CTX* ossl = EVP_CIPHER_CTX_new();
  for (size_t len : {1, 15, 16, 63, 64, 65, 255, 256, 257, 1000, 16384 + 9, 100000}) {
    for (size_t split : {size_t{0}, size_t{1}, size_t{17}, len / 2}) {
      std::vector<uint8_t> in(len);
      for (auto& b : in) b = static_cast<uint8_t>(rng());
      std::vector<uint8_t> iv(nonce);
      iv.insert(iv.end(), {0, 0, 0, 2});
      std::vector<uint8_t> want(len);
      int n = 0;
      ASSERT_EQ(EVP_EncryptInit_ex(ossl, EVP_aes_256_ctr(), nullptr, key.data(), iv.data()), 1);
      ASSERT_EQ(EVP_EncryptUpdate(ossl, want.data(), &n, in.data(), static_cast<int>(len)), 1);
      std::vector<uint8_t> got(len);
      aes.start(nonce.data(), 2);
      const size_t cut = std::min(split, len);
      aes.apply(in.data(), got.data(), cut);
      aes.apply(in.data() + cut, got.data() + cut, (len - cut) / 3);
      const size_t third = cut + (len - cut) / 3;
      aes.apply(in.data() + third, got.data() + third, len - third);
      EXPECT_EQ(got, want) << "len " << len << " split " << split;
    }
  }
  EVP_CIPHER_CTX_free(ossl);
}

// GCM's counter wraps in its last 32 bits (inc32), never carrying into the nonce.
TEST(AesCtr, CounterWrapsInItsLastWord) {
  if (!AesCtr::supported()) GTEST_SKIP() << "no VAES / AVX-512 on this CPU: only OpenSSL's AES-GCM is used";
  AesCtr aes;
  std::vector<uint8_t> key(32, 5);
  aes.init(key.data());
  std::vector<uint8_t> nonce(12, 9);
  std::vector<uint8_t> zeros(64 * 20);
  std::vector<uint8_t> stream(zeros.size());
  aes.start(nonce.data(), 0xfffffff0u);
  aes.apply(zeros.data(), stream.data(), stream.size());
  for (size_t i = 0; i < zeros.size() / 16; ++i) {
    std::vector<uint8_t> block(nonce);
    const uint32_t counter = 0xfffffff0u + static_cast<uint32_t>(i);
    for (int b = 3; b >= 0; --b) block.push_back(static_cast<uint8_t>(counter >> (8 * b)));
    std::vector<uint8_t> want(16);
    aes.encrypt_block(block.data(), want.data());
    ASSERT_EQ(std::vector<uint8_t>(stream.begin() + 16 * i, stream.begin() + 16 * (i + 1)), want) << "block " << i;
  }
}

/// `len` bytes split at `cuts` (offsets, ascending) into iovecs.
std::vector<iovec> pieces(std::vector<uint8_t>& bytes, const std::vector<size_t>& cuts) {
  std::vector<iovec> out;
  size_t at = 0;
  for (size_t cut : cuts) {
    if (cut <= at || cut >= bytes.size()) continue;
    out.push_back({bytes.data() + at, cut - at});
    at = cut;
  }
  out.push_back({bytes.data() + at, bytes.size() - at});
  return out;
}

// The wide GHASH computes exactly OpenSSL's AES-GCM: the same ciphertext and tags for every length (partial
// blocks, the 512-byte steps and their tails), header and split, and each opens what the other sealed.
TEST(Backends, WideMatchesOpenSslAndEachOpensTheOther) {
  if (!Ghash::supported() || !AesCtr::supported()) GTEST_SKIP() << "no VAES / VPCLMULQDQ / AVX-512 on this CPU";
  std::mt19937 rng(7);
  const Keys keys = derive("secret", sha256("transcript"), "traffic");
  for (Mode mode : {Mode::kMac, Mode::kAead}) {
    Direction wide_tx;
    Direction ossl_tx;
    Direction wide_rx;
    Direction ossl_rx;
    wide_tx.reset(mode, keys.client_to_server, Backend::kAuto);
    ossl_tx.reset(mode, keys.client_to_server, Backend::kOpenSsl);
    wide_rx.reset(mode, keys.client_to_server, Backend::kAuto);
    ossl_rx.reset(mode, keys.client_to_server, Backend::kOpenSsl);
    ASSERT_TRUE(wide_tx.wide());
    ASSERT_FALSE(ossl_tx.wide());
    for (size_t len :
         {0, 1, 15, 16, 17, 511, 512, 513, 1023, 1024, 1025, 4096, 16384 + 7, 65536 + 33, 262144, 262144 + 5}) {
      for (size_t aad_len : {0, 5, 16, 21}) {
        std::vector<uint8_t> aad(aad_len);
        std::vector<uint8_t> plain(len);
        for (auto& b : aad) b = static_cast<uint8_t>(rng());
        for (auto& b : plain) b = static_cast<uint8_t>(rng());
        const std::vector<size_t> cuts{len / 3, len / 3 + 1, len / 2 + 7};
        std::vector<uint8_t> out_wide(len);
        std::vector<uint8_t> out_ossl(len);
        std::vector<uint8_t> tag_wide(kTagBytes);
        std::vector<uint8_t> tag_ossl(kTagBytes);
        ASSERT_TRUE(wide_tx.seal(aad.data(), aad_len, pieces(plain, cuts), out_wide.data(), tag_wide.data()).ok());
        ASSERT_TRUE(ossl_tx.seal(aad.data(), aad_len, pieces(plain, {}), out_ossl.data(), tag_ossl.data()).ok());
        const std::string where = "mode " + std::to_string(static_cast<int>(mode)) + " len " + std::to_string(len) +
                                  " aad " + std::to_string(aad_len);
        ASSERT_EQ(tag_wide, tag_ossl) << where;
        if (mode == Mode::kAead) ASSERT_EQ(out_wide, out_ossl) << where;
        std::vector<uint8_t> wire = mode == Mode::kAead ? out_wide : plain;
        std::vector<uint8_t> copy = wire;
        ASSERT_TRUE(wide_rx.open(aad.data(), aad_len, pieces(wire, cuts), tag_ossl.data())) << where;
        ASSERT_TRUE(ossl_rx.open(aad.data(), aad_len, pieces(copy, {len / 2}), tag_wide.data())) << where;
        EXPECT_EQ(wire, plain) << where;
        EXPECT_EQ(copy, plain) << where;
      }
    }
  }
}

// A record opened where it lies, scattered over several pieces, fails when any byte of any piece changed.
TEST_P(Modes, ScatteredRecordTamperedAnywhereFails) {
  std::vector<uint8_t> plain(70000);
  for (size_t i = 0; i < plain.size(); ++i) plain[i] = static_cast<uint8_t>(i * 31);
  const std::vector<size_t> cuts{1000, 1001, 40000};
  for (size_t flip : {size_t{0}, size_t{999}, size_t{1000}, size_t{1001}, size_t{39999}, size_t{69999}}) {
    Pair p(mode(), backend());
    std::vector<uint8_t> wire(plain.size());
    std::vector<uint8_t> tag(kTagBytes);
    ASSERT_TRUE(p.tx.seal(nullptr, 0, pieces(plain, {}), wire.data(), tag.data()).ok());
    if (mode() == Mode::kMac) wire = plain;
    wire[flip] ^= 0x10;
    EXPECT_FALSE(p.rx.open(nullptr, 0, pieces(wire, cuts), tag.data())) << "byte " << flip;
  }
}

}  // namespace
}  // namespace cachelink::channel
