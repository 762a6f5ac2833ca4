#include <gtest/gtest.h>

#include "engine/mapping/mapper.h"
#include "tests/test_util.h"

namespace wxa::mapping {
namespace {

TEST(E164, SameNumberManyWays) {
  for (const char* s : {"+86 138-0013-8000", "8613800138000", "13800138000", "0086 13800138000",
                        "(+86) 138 0013 8000", "+86.138.0013.8000", "8613800138000.0"}) {
    auto n = NormalizeE164(s, "CN");
    ASSERT_TRUE(n.has_value()) << s;
    EXPECT_EQ(*n, "+8613800138000") << s;
  }
  EXPECT_EQ(*NormalizeE164("+1 650-253-0000", "CN"), "+16502530000");
  EXPECT_EQ(*NormalizeE164("650-253-0000", "US"), "+16502530000");
  EXPECT_FALSE(NormalizeE164("abc", "CN").has_value());
  EXPECT_FALSE(NormalizeE164("", "CN").has_value());
  EXPECT_FALSE(NormalizeE164("12", "CN").has_value());
}

TEST(Mailbox, Validation) {
  EXPECT_EQ(*NormalizeMailbox(" Alice@Corp.Example.com "), "alice@corp.example.com");
  EXPECT_EQ(*NormalizeMailbox("Alice <alice@x.com>"), "alice@x.com");
  EXPECT_EQ(*NormalizeMailbox("mailto:bob@x.com"), "bob@x.com");
  for (const char* bad : {"not-an-address", "a@b", "@x.com", "a@.x.com", "a..b@x.com", "a b@x.com",
                          "a@x..com", "a@-x.com", ""}) {
    EXPECT_FALSE(NormalizeMailbox(bad).has_value()) << bad;
  }
}

class MapperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = wecom::Directory::Parse(
        "userid,name,mobile,email\n"
        "both,Both,+86 138 0013 8000,both@corp.com\n"        // CSV wins over e-mail
        "csvonly,CSV only,13900139000,\n"                    // CSV, no e-mail
        "emailonly,E-mail only,,emailonly@corp.com\n"        // e-mail only
        "unlisted,Unlisted,13700137000,unlisted@corp.com\n"  // CSV target not a known mailbox
        "nothing,Nothing,,\n"                                // unmapped
        "badmail,Bad,,not-an-address\n",                     // unmapped
        "dir.csv");
    ASSERT_TRUE(d.ok());
    dir_ = std::move(*d);
    test::WriteFile(tmp_ / "map.csv",
                    "\xEF\xBB\xBFMobile,Mailbox\r\n"
                    "8613800138000,Both.Mapped@corp.com\r\n"
                    "\"0086 139 0013 9000\" , csv.only@corp.com\r\n"
                    "+86 13700137000,ghost@corp.com\r\n"
                    "12,x@corp.com\r\n"
                    "13600136000,not-an-address\r\n");
    test::WriteFile(tmp_ / "mailboxes.txt",
                    "PrimarySmtpAddress\nboth.mapped@corp.com\ncsv.only@corp.com\n"
                    "emailonly@corp.com\nunlisted@corp.com\nboth@corp.com\n");
  }
  test::TempDir tmp_;
  wecom::Directory dir_;
};

TEST_F(MapperTest, CsvFirstThenEmailThenUnmapped) {
  auto m = Mapper::Create(&dir_, tmp_ / "map.csv", tmp_ / "mailboxes.txt", {});
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->mapping_rows(), 3u);
  EXPECT_EQ(m->issues().size(), 2u);  // "12" and "not-an-address"

  auto both = m->Resolve("both");
  EXPECT_EQ(both.mailbox, "both.mapped@corp.com");
  EXPECT_EQ(both.via, Resolution::Via::kMappingCsv);
  EXPECT_EQ(m->Resolve("csvonly").mailbox, "csv.only@corp.com");
  auto email = m->Resolve("emailonly");
  EXPECT_EQ(email.mailbox, "emailonly@corp.com");
  EXPECT_EQ(email.via, Resolution::Via::kDirectoryEmail);
  // The CSV names a mailbox the target does not have: fall back to the e-mail.
  auto unlisted = m->Resolve("unlisted");
  EXPECT_EQ(unlisted.mailbox, "unlisted@corp.com");
  EXPECT_EQ(unlisted.via, Resolution::Via::kDirectoryEmail);
  auto nothing = m->Resolve("nothing");
  EXPECT_FALSE(nothing.mapped());
  EXPECT_NE(nothing.why_not.find("no e-mail"), std::string::npos);
  EXPECT_NE(m->Resolve("badmail").why_not.find("not a valid address"), std::string::npos);
  EXPECT_NE(m->Resolve("wmErxtDgAA9AW32YyyuYRimKr7D1KWlw").why_not.find("external"), std::string::npos);
  EXPECT_NE(m->Resolve("stranger").why_not.find("not in the user directory"), std::string::npos);
}

TEST_F(MapperTest, MailboxListRestrictsEmailToo) {
  test::WriteFile(tmp_ / "few.txt", "both@corp.com\n");
  auto m = Mapper::Create(&dir_, "", tmp_ / "few.txt", {});
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->Resolve("both").mailbox, "both@corp.com");
  auto email = m->Resolve("emailonly");
  EXPECT_FALSE(email.mapped());
  EXPECT_NE(email.why_not.find("not a known mailbox"), std::string::npos);
}

TEST_F(MapperTest, WithoutListAnyValidAddressCounts) {
  auto m = Mapper::Create(&dir_, tmp_ / "map.csv", "", {});
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->Resolve("unlisted").mailbox, "ghost@corp.com");
  EXPECT_FALSE(m->has_mailbox_list());
}

TEST_F(MapperTest, PersonsForRendering) {
  auto m = Mapper::Create(&dir_, tmp_ / "map.csv", "", {});
  ASSERT_TRUE(m.ok());
  auto p = m->PersonFor("both");
  EXPECT_EQ(p.name, "Both");
  EXPECT_EQ(p.address, "both.mapped@corp.com");
  EXPECT_EQ(m->PersonFor("badmail").address, "badmail@wecom.invalid");
  EXPECT_EQ(m->PersonFor("wmX").name, "wmX");
  core::Item it;
  it.from = "both";
  it.to = {"both", "nothing", "nothing", "emailonly"};
  auto in = m->ParticipantsFor(it);
  ASSERT_EQ(in.to.size(), 2u);
  EXPECT_EQ(in.to[0].id, "nothing");
  EXPECT_EQ(in.to[1].address, "emailonly@corp.com");
}

// The target refusing mailboxes (IMAP: no such folder owner) moves each
// participant to the next rule; a later answer replaces the earlier one.
TEST_F(MapperTest, TargetRefusalFallsBackToTheNextRule) {
  auto m = Mapper::Create(&dir_, tmp_ / "map.csv", "", {});
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->Resolve("both").mailbox, "both.mapped@corp.com");
  EXPECT_EQ(m->Resolve("csvonly").mailbox, "csv.only@corp.com");

  m->SetUnknownToTarget({"both.mapped@corp.com", "csv.only@corp.com"});
  Resolution both = m->Resolve("both");
  EXPECT_EQ(both.mailbox, "both@corp.com");
  EXPECT_EQ(both.via, Resolution::Via::kDirectoryEmail);
  Resolution csvonly = m->Resolve("csvonly");
  EXPECT_FALSE(csvonly.mapped());
  EXPECT_NE(csvonly.why_not.find("csv.only@corp.com, which is not a known mailbox of the target"),
            std::string::npos)
      << csvonly.why_not;

  m->SetUnknownToTarget({});
  EXPECT_EQ(m->Resolve("both").mailbox, "both.mapped@corp.com");
  EXPECT_EQ(m->Resolve("csvonly").mailbox, "csv.only@corp.com");
  EXPECT_EQ(m->Resolve("emailonly").mailbox, "emailonly@corp.com");
}

TEST_F(MapperTest, ClearErrors) {
  auto no_file = Mapper::Create(&dir_, tmp_ / "missing.csv", "", {});
  ASSERT_FALSE(no_file.ok());
  EXPECT_NE(no_file.status().message().find("mapping CSV"), std::string::npos);
  test::WriteFile(tmp_ / "noheader.csv", "a,b\n1,2\n");
  auto bad = Mapper::Create(&dir_, tmp_ / "noheader.csv", "", {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("mobile"), std::string::npos);
  EXPECT_FALSE(Mapper::Create(&dir_, "", "", {"XX"}).ok());
  EXPECT_FALSE(Mapper::Create(&dir_, "", "", {""}).ok());
  EXPECT_TRUE(Mapper::Create(&dir_, "", "", {"US"}).ok());
  test::WriteFile(tmp_ / "empty.txt", "# nothing\n");
  EXPECT_FALSE(Mapper::Create(&dir_, "", tmp_ / "empty.txt", {}).ok());
}

}  // namespace
}  // namespace wxa::mapping
