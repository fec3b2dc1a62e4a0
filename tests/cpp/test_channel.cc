#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "channel.h"

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
  explicit Pair(Mode mode, const std::string& secret = "secret") {
    Keys keys = derive(secret, sha256("transcript"), "traffic");
    tx.reset(mode, keys.client_to_server);
    rx.reset(mode, keys.client_to_server);
  }
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

class Modes : public ::testing::TestWithParam<Mode> {};

TEST_P(Modes, RoundTrip) {
  Pair p(GetParam());
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
  Pair p(GetParam());
  Sealed s = seal(p.tx, "h", "a prompt's KV cache");
  const std::string wire(s.bytes.begin(), s.bytes.end());
  EXPECT_EQ(wire == "a prompt's KV cache", GetParam() == Mode::kMac);
}

TEST_P(Modes, TamperedPayloadHeaderOrTagFails) {
  for (int what = 0; what < 3; ++what) {
    Pair p(GetParam());
    Sealed s = seal(p.tx, "header", "payload");
    std::string aad = "header";
    if (what == 0) s.bytes[3] ^= 1;
    if (what == 1) aad[0] ^= 1;
    if (what == 2) s.tag[15] ^= 0x80;
    EXPECT_FALSE(open(p.rx, aad, s)) << "case " << what;
  }
}

TEST_P(Modes, ReplayFails) {
  Pair p(GetParam());
  Sealed s = seal(p.tx, "h", "write 1");
  ASSERT_TRUE(open(p.rx, "h", s));
  EXPECT_FALSE(open(p.rx, "h", s));  // the same record again: the receiver expects the next sequence number
}

TEST_P(Modes, ReorderFails) {
  Pair p(GetParam());
  Sealed first = seal(p.tx, "h", "first");
  Sealed second = seal(p.tx, "h", "second");
  EXPECT_FALSE(open(p.rx, "h", second));
}

TEST_P(Modes, DroppedRecordBreaksTheRest) {
  Pair p(GetParam());
  (void)seal(p.tx, "h", "dropped on the way");
  Sealed next = seal(p.tx, "h", "next");
  EXPECT_FALSE(open(p.rx, "h", next));
}

TEST_P(Modes, InjectedOrWrongKeyFails) {
  Pair p(GetParam());
  Pair attacker(GetParam(), "guessed");
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
  tx.reset(GetParam(), keys.client_to_server);
  rx.reset(GetParam(), keys.server_to_client);
  EXPECT_FALSE(open(rx, "h", seal(tx, "h", "reflected")));
}

TEST_P(Modes, ScatteredInputSealsLikeContiguous) {
  Pair a(GetParam());
  Pair b(GetParam());
  std::string left = "scattered ";
  std::string right = "segments";
  std::vector<uint8_t> out((left + right).size());
  std::vector<uint8_t> tag(kTagBytes);
  std::vector<iovec> in{{left.data(), left.size()}, {right.data(), right.size()}};
  ASSERT_TRUE(a.tx.seal(nullptr, 0, in, out.data(), tag.data()).ok());
  Sealed whole = seal(b.tx, "", left + right);
  EXPECT_EQ(tag, whole.tag);
  if (GetParam() == Mode::kAead) EXPECT_EQ(out, whole.bytes);
}

TEST_P(Modes, EmptyPayloadStillAuthenticatesTheHeader) {
  Pair p(GetParam());
  Sealed s = seal(p.tx, "goodbye header", "");
  EXPECT_TRUE(open(p.rx, "goodbye header", s));
  Sealed t = seal(p.tx, "goodbye header", "");
  EXPECT_FALSE(open(p.rx, "goodbye headeR", t));
}

INSTANTIATE_TEST_SUITE_P(Channel, Modes, ::testing::Values(Mode::kMac, Mode::kAead));

}  // namespace
}  // namespace cachelink::channel
