#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

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

class Root {
 public:
  Root() : fd_(::open(dir_.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {}
  int fd() const { return fd_.get(); }
  const std::string& path() const { return dir_.path(); }
  std::string operator/(const std::string& n) const { return dir_ / n; }

 private:
  test::TempDir dir_;
  core::UniqueFd fd_;
};

Result<MailFolder> OpenMaildir(core::Env* env, const Root& root, const std::string& mbox, bool create = true) {
  return MailFolder::Open(env, Layout::kMaildir, root.fd(), root.path(), mbox, ".WeChat Archiver", create);
}

TEST(MailFolder, DeliversIntoCurWithSeenFlagDatedByTheMessage) {
  Root root;
  core::Env* env = core::Env::Default();
  auto key = core::ItemKey::For("wecom", "c", "m1");
  EXPECT_TRUE(OpenMaildir(env, root, "a@x.com", false).status().IsNotFound());
  auto f = OpenMaildir(env, root, "a@x.com");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_FALSE(*f->Contains(key, 1603875600123));
  auto tmp = f->Stage(key, 1603875600123, "Subject: x\r\n\r\nbody\r\n", true);
  ASSERT_TRUE(tmp.ok());
  EXPECT_FALSE(*f->Contains(key, 1603875600123)) << "a staged file is not an item yet";
  ASSERT_TRUE(f->Publish(*tmp, key, 1603875600123).ok());
  ASSERT_TRUE(f->SyncFinalDir().ok());
  EXPECT_TRUE(*f->Contains(key, 1603875600123));
  const std::string name = "a@x.com/.WeChat Archiver/cur/1603875600." + key.Hex() + ".wxa:2,S";
  EXPECT_EQ(test::ListFiles(root.path()),
            (std::vector<std::string>{name, "a@x.com/.WeChat Archiver/maildirfolder"}));
  EXPECT_EQ(f->FinalPath(key, 1603875600123), root / name);
  for (const char* sub : {"a@x.com/cur", "a@x.com/new", "a@x.com/tmp",
                          "a@x.com/.WeChat Archiver/new", "a@x.com/.WeChat Archiver/tmp"}) {
    EXPECT_TRUE(core::IsDirectory(root / sub)) << sub;
  }
  // Issue #8 item 17: Dovecot's INTERNALDATE is the file's mtime.
  struct stat st {};
  ASSERT_EQ(::stat((root / name).c_str(), &st), 0);
  EXPECT_EQ(st.st_mtime, 1603875600);
  // A temp file a crashed run left behind is cleaned; items are not touched.
  test::WriteFile(root / "a@x.com/.WeChat Archiver/tmp/1.abc.wxa.123_4", "partial");
  EXPECT_EQ(*f->CleanTemp(), 1u);
  EXPECT_EQ(test::ListFiles(root / "a@x.com/.WeChat Archiver/tmp").size(), 0u);
  EXPECT_TRUE(*f->Contains(key, 1603875600123));
}

// Issue #8 item 18: a client that changes flags renames the file; a rerun
// without the index must still find it (in cur/ or new/).
TEST(MailFolder, FindsItemsWhateverTheirFlags) {
  Root root;
  auto f = OpenMaildir(core::Env::Default(), root, "a@x.com");
  ASSERT_TRUE(f.ok());
  auto k1 = core::ItemKey::For("wecom", "c", "m1");
  auto k2 = core::ItemKey::For("wecom", "c", "m2");
  auto k3 = core::ItemKey::For("wecom", "c", "m3");
  test::WriteFile(root / ("a@x.com/.WeChat Archiver/cur/" + BaseName(k1, 5000) + ":2,FRS"), "x");
  test::WriteFile(root / ("a@x.com/.WeChat Archiver/new/" + BaseName(k2, 5000)), "x");
  test::WriteFile(root / ("a@x.com/.WeChat Archiver/cur/" + BaseName(k3, 5000) + ",S=120:2,"), "x");
  auto g = OpenMaildir(core::Env::Default(), root, "a@x.com");
  ASSERT_TRUE(g.ok());
  EXPECT_TRUE(*g->Contains(k1, 5000));
  EXPECT_TRUE(*g->Contains(k2, 5000));
  EXPECT_TRUE(*g->Contains(k3, 5000));
  EXPECT_FALSE(*g->Contains(core::ItemKey::For("wecom", "c", "m4"), 5000));
  EXPECT_EQ(KeyFromFileName(BaseName(k1, 5000) + ":2,S"), k1);
  EXPECT_EQ(KeyFromFileName("123.zz.wxa"), std::nullopt);
}

// Issue #8 item 4: a symlink planted in the output tree is refused, never
// followed: nothing is written where it points.
TEST(MailFolder, SymlinksInTheTreeAreRefused) {
  for (const char* planted : {"", "/.WeChat Archiver", "/.WeChat Archiver/tmp", "/.WeChat Archiver/cur"}) {
    Root root;
    test::TempDir elsewhere;
    std::string link = root / (std::string("a@x.com") + planted);
    if (*planted != '\0') {
      auto f = OpenMaildir(core::Env::Default(), root, "a@x.com");
      ASSERT_TRUE(f.ok());
      std::filesystem::remove_all(link);
    }
    ASSERT_EQ(::symlink(elsewhere.path().c_str(), link.c_str()), 0) << link;
    auto f = OpenMaildir(core::Env::Default(), root, "a@x.com");
    ASSERT_FALSE(f.ok()) << planted;
    EXPECT_EQ(f.status().code(), Status::Code::kInvalidArgument) << planted;
    EXPECT_NE(f.status().message().find("symlink"), std::string::npos) << f.status().ToString();
    EXPECT_TRUE(test::ListFiles(elsewhere.path()).empty()) << planted;
  }
  // And an item name taken by a symlink is an error, not "already there".
  Root root;
  auto f = OpenMaildir(core::Env::Default(), root, "a@x.com");
  ASSERT_TRUE(f.ok());
  auto key = core::ItemKey::For("wecom", "c", "m1");
  ASSERT_EQ(::symlink("/etc/hostname", f->FinalPath(key, 0).c_str()), 0);
  EXPECT_FALSE(f->Contains(key, 0).ok());
}

TEST(MailFolder, WriteFailureLeavesNothing) {
  Root root;
  test::FaultEnv env;
  auto f = OpenMaildir(&env, root, "a@x.com");
  ASSERT_TRUE(f.ok());
  env.fail_writes_after = 0;
  auto key = core::ItemKey::For("wecom", "c", "m1");
  auto s = f->Stage(key, 0, "data", true);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().os_errno(), ENOSPC);
  EXPECT_EQ(test::ListFiles(root.path()), std::vector<std::string>{"a@x.com/.WeChat Archiver/maildirfolder"});
}

TEST(MailFolder, EmlOneFilePerItem) {
  Root root;
  auto f = MailFolder::Open(core::Env::Default(), Layout::kEml, root.fd(), root.path(), "a@x.com",
                            "WeChat Archiver", true);
  ASSERT_TRUE(f.ok());
  auto key = core::ItemKey::For("wecom", "c", "m1");
  auto tmp = f->Stage(key, 2000, "x", false);
  ASSERT_TRUE(tmp.ok());
  ASSERT_TRUE(f->Publish(*tmp, key, 2000).ok());
  EXPECT_TRUE(*f->Contains(key, 2000));
  EXPECT_EQ(test::ListFiles(root.path()),
            std::vector<std::string>{"a@x.com/WeChat Archiver/2." + key.Hex() + ".wxa.eml"});
  test::WriteFile(root / "a@x.com/WeChat Archiver/.2.x.wxa.1_1.tmp", "partial");
  EXPECT_EQ(*f->CleanTemp(), 1u);
}

// Issue #8 item 5: a mailbox name too long for a directory entry gets a
// stable short form that still tells mailboxes apart.
TEST(MailboxDirName, LongNamesAreShortenedStably) {
  std::string local(240, 'a');
  std::string a = local + "@" + std::string(60, 'b') + ".com";
  std::string b = local + "@" + std::string(60, 'c') + ".com";
  std::string da = MailboxDirName(a), db = MailboxDirName(b);
  EXPECT_LE(da.size(), kMaxNameBytes);
  EXPECT_NE(da, db);
  EXPECT_EQ(da, MailboxDirName(a));
  EXPECT_EQ(da.substr(0, 10), "aaaaaaaaaa");
  // Escapes are never cut in half.
  std::string escaped = MailboxDirName(std::string(100, ' ') + "@x.com");
  EXPECT_LE(escaped.size(), kMaxNameBytes);
  size_t tilde = escaped.rfind('~');
  ASSERT_NE(tilde, std::string::npos);
  EXPECT_EQ(tilde % 3, 0u) << escaped;
  EXPECT_FALSE(FolderDirName(std::string(300, 'x')).ok());
}

}  // namespace
}  // namespace wxa::maildir
