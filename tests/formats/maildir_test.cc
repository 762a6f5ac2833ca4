#include <gtest/gtest.h>

#include "formats/eml/eml_writer.h"
#include "formats/maildir/maildir_writer.h"
#include "tests/test_util.h"

namespace wxa::maildir {
namespace {

TEST(ModifiedUtf7, Rfc3501Examples) {
  EXPECT_EQ(EncodeModifiedUtf7("WeChat Archiver"), "WeChat Archiver");
  EXPECT_EQ(EncodeModifiedUtf7("&"), "&-");
  EXPECT_EQ(EncodeModifiedUtf7("台北"), "&U,BTFw-");          // RFC 3501 5.1.3
  EXPECT_EQ(EncodeModifiedUtf7("日本語"), "&ZeVnLIqe-");       // RFC 3501 5.1.3
  EXPECT_EQ(EncodeModifiedUtf7("微信存档 A"), "&X65P4VtYaGM- A");
  EXPECT_EQ(EncodeModifiedUtf7("😀"), "&2D3eAA-");             // surrogate pair
}

TEST(FolderDirName, Maildirplusplus) {
  EXPECT_EQ(*FolderDirName("WeChat Archiver"), ".WeChat Archiver");
  EXPECT_EQ(*FolderDirName("Archive/WeChat"), ".Archive.WeChat");
  EXPECT_FALSE(FolderDirName("a.b").ok());
  EXPECT_FALSE(FolderDirName("").ok());
  EXPECT_FALSE(FolderDirName("a//b").ok());
  EXPECT_EQ(*eml::FolderPath("Archive/WeChat"), "Archive/WeChat");
  EXPECT_FALSE(eml::FolderPath("../x").ok());  // ".." is no folder name
  EXPECT_FALSE(eml::FolderPath("/").ok());
}

TEST(MailboxDirName, SafeAndStable) {
  EXPECT_EQ(MailboxDirName("Alice.Smith@Corp.Example.COM"), "alice.smith@corp.example.com");
  std::string evil = MailboxDirName("../../x@y.z");
  EXPECT_EQ(evil.find('/'), std::string::npos);
  EXPECT_NE(evil[0], '.');
  EXPECT_EQ(MailboxDirName("a b@x.com"), "a%20b@x.com");
}

TEST(MaildirWriter, DeliversIntoCurWithSeenFlag) {
  test::TempDir dir;
  core::Env* env = core::Env::Default();
  MaildirWriter w(env, dir.path(), ".WeChat Archiver");
  auto key = core::ItemKey::For("wecom", "c", "m1");
  ASSERT_TRUE(w.PrepareMailbox("a@x.com").ok());
  EXPECT_FALSE(*w.Exists("a@x.com", key, 1603875600123));
  ASSERT_TRUE(w.Deliver("a@x.com", key, 1603875600123, "Subject: x\r\n\r\nbody\r\n").ok());
  ASSERT_TRUE(w.SyncFolder("a@x.com").ok());
  EXPECT_TRUE(*w.Exists("a@x.com", key, 1603875600123));
  const std::string name = "a@x.com/.WeChat Archiver/cur/1603875600." + key.Hex() + ".wxa:2,S";
  EXPECT_EQ(test::ListFiles(dir.path()),
            (std::vector<std::string>{name, "a@x.com/.WeChat Archiver/maildirfolder"}));
  EXPECT_EQ(w.PathFor("a@x.com", key, 1603875600123), dir / name);
  for (const char* sub : {"a@x.com/cur", "a@x.com/new", "a@x.com/tmp",
                          "a@x.com/.WeChat Archiver/new", "a@x.com/.WeChat Archiver/tmp"}) {
    EXPECT_TRUE(core::IsDirectory(dir / sub)) << sub;
  }
  // A temp file a crashed run left behind is cleaned; items are not touched.
  test::WriteFile(dir / "a@x.com/.WeChat Archiver/tmp/1.abc.wxa.123_4", "partial");
  EXPECT_EQ(*w.CleanTemp("a@x.com"), 1u);
  EXPECT_EQ(test::ListFiles(dir / "a@x.com/.WeChat Archiver/tmp").size(), 0u);
  EXPECT_TRUE(*w.Exists("a@x.com", key, 1603875600123));
}

TEST(MaildirWriter, WriteFailureLeavesNothing) {
  test::TempDir dir;
  test::FaultEnv env;
  env.fail_writes_after = 0;
  MaildirWriter w(&env, dir.path(), ".WeChat Archiver");
  auto key = core::ItemKey::For("wecom", "c", "m1");
  ASSERT_TRUE(w.PrepareMailbox("a@x.com").ok());
  Status s = w.Deliver("a@x.com", key, 0, "data");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.os_errno(), ENOSPC);
  EXPECT_EQ(test::ListFiles(dir.path()), std::vector<std::string>{"a@x.com/.WeChat Archiver/maildirfolder"});
}

TEST(EmlWriter, OneFilePerItem) {
  test::TempDir dir;
  eml::EmlWriter w(core::Env::Default(), dir.path(), "WeChat Archiver");
  auto key = core::ItemKey::For("wecom", "c", "m1");
  ASSERT_TRUE(w.PrepareMailbox("a@x.com").ok());
  ASSERT_TRUE(w.Deliver("a@x.com", key, 2000, "x").ok());
  ASSERT_TRUE(w.SyncFolder("a@x.com").ok());
  EXPECT_TRUE(*w.Exists("a@x.com", key, 2000));
  EXPECT_EQ(test::ListFiles(dir.path()),
            std::vector<std::string>{"a@x.com/WeChat Archiver/2." + key.Hex() + ".wxa.eml"});
  test::WriteFile(dir / "a@x.com/WeChat Archiver/.2.x.wxa.1_1.tmp", "partial");
  EXPECT_EQ(*w.CleanTemp("a@x.com"), 1u);
}

}  // namespace
}  // namespace wxa::maildir
