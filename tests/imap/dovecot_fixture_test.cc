#include "tests/imap/dovecot_fixture.h"

#include <gtest/gtest.h>

#include "tests/imap/imap_test_client.h"

namespace wxa::test {
namespace {

TEST(ImapFixture, StartsMdbox) {
  auto f = DovecotFixture::Start({});
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  auto c = (*f)->LoginClient("u1");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
}

}  // namespace
}  // namespace wxa::test
