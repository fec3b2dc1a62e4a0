#include <gtest/gtest.h>

#include <string>

#include "auth.h"

namespace cachelink::auth {
namespace {

TEST(Auth, NonceIsAStatusWithFreshBytes) {
  std::string a;
  std::string b;
  ASSERT_TRUE(random_nonce(&a).ok());
  ASSERT_TRUE(random_nonce(&b).ok());
  EXPECT_EQ(a.size(), kNonceBytes);
  EXPECT_EQ(b.size(), kNonceBytes);
  EXPECT_NE(a, b);
}

TEST(Auth, ProofDependsOnEveryInput) {
  const std::string base = proof("secret", kServerLabel, "first", "second", 7);
  EXPECT_EQ(base, proof("secret", kServerLabel, "first", "second", 7));
  EXPECT_EQ(base.size(), 32u);  // HMAC-SHA256
  EXPECT_NE(base, proof("other", kServerLabel, "first", "second", 7));
  EXPECT_NE(base, proof("secret", kClientLabel, "first", "second", 7));
  EXPECT_NE(base, proof("secret", kServerLabel, "second", "first", 7));
  EXPECT_NE(base, proof("secret", kServerLabel, "first", "second", 8));
  EXPECT_TRUE(same(base, proof("secret", kServerLabel, "first", "second", 7)));
  EXPECT_FALSE(same(base, base.substr(1)));
}

}  // namespace
}  // namespace cachelink::auth
