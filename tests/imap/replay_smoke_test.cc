// wxa_multiappend_replay (bench/imap) is a reference, so it must itself be
// right: every message of the tree lands exactly once with its date, flags
// and bytes; and it falls back to plain APPENDs when the server (here the
// proxy, enforcing) offers no LITERAL+ / MULTIAPPEND.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "tests/imap/fault_proxy.h"
#include "tests/imap/imap_test_support.h"

namespace wxa::test {
namespace {

namespace fs = std::filesystem;

struct TreeMessage {
  std::string text;
  int64_t mtime;
  std::vector<std::string> flags;
};

class ImapFixtureReplay : public DovecotTest {
 protected:
  void SetUp() override {
#ifndef WXA_REPLAY_BIN
    GTEST_SKIP() << "bench/imap is not part of this build (WXA_BUILD_BENCH=OFF)";
#endif
    char tmpl[] = "/tmp/wxa-replay-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    tree_ = tmpl;
  }
  void TearDown() override {
    DovecotTest::TearDown();
    std::error_code ec;
    if (!tree_.empty()) fs::remove_all(tree_, ec);
  }
  // The engine's layout: <box>/.WeChat Archiver/{cur,new}/<secs>.<hex>.wxa:2,<flags>.
  void WriteTree(int boxes, int per_box) {
    for (int b = 0; b < boxes; ++b) {
      std::string box = "user" + std::to_string(b) + "@corp.example.com";
      std::string dir = tree_ + "/" + box + "/.WeChat Archiver";
      for (const char* sub : {"/cur", "/new", "/tmp"}) fs::create_directories(dir + sub);
      for (int i = 0; i < per_box; ++i) {
        std::string id = "b" + std::to_string(b) + "m" + std::to_string(i);
        int64_t t = 1709625600 + b * 100000 + i * 60;
        const char* info = i % 3 == 0 ? ":2,S" : i % 3 == 1 ? ":2,FS" : ":2,";
        std::string name = std::to_string(t) + "." + std::string(32 - id.size(), '0') + id + ".wxa" + info;
        std::string path = dir + (i == 5 ? "/new/" : "/cur/") + name;
        std::string text = TestMessage(id, 200 + (i * 37) % 3000);
        std::ofstream(path, std::ios::binary) << text;
        timespec ts[2] = {{static_cast<time_t>(t), 0}, {static_cast<time_t>(t), 0}};
        ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), ts, 0), 0);
        std::vector<std::string> flags;
        if (i % 3 == 1) flags.push_back("\\Flagged");
        if (i % 3 != 2) flags.push_back("\\Seen");
        expected_[box][MessageId(id)] = {text, t, flags};
      }
    }
  }
  // Runs the replay; returns its exit code and stdout (the JSON line).
  int Replay(uint16_t port, const std::string& extra, std::string* out) {
#ifdef WXA_REPLAY_BIN
    std::string cmd = std::string(WXA_REPLAY_BIN) + " --root " + tree_ + " --port " +
                      std::to_string(port) + " --master wxa-master:master-secret --verify " + extra +
                      " 2>&1";
    FILE* p = ::popen(cmd.c_str(), "r");
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out->append(buf, n);
    int st = ::pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
#else
    return -1;
#endif
  }
  void CheckStored() {
    for (const auto& [box, msgs] : expected_) {
      auto census = dovecot_->Census(box, "WeChat Archiver");
      ASSERT_TRUE(census.ok()) << census.status().ToString();
      std::vector<std::string> ids;
      for (const auto& [id, m] : msgs) ids.push_back(id);
      Status once = CheckExactlyOnce(ids, *census);
      EXPECT_TRUE(once.ok()) << box << ": " << once.ToString();
      for (const auto& m : census->messages) {
        auto it = msgs.find(m.message_id);
        if (it == msgs.end()) continue;
        EXPECT_EQ(m.text, it->second.text) << m.message_id;
        EXPECT_EQ(m.internal_date, it->second.mtime) << m.message_id;
        EXPECT_EQ(m.flags, it->second.flags) << m.message_id;
      }
    }
  }
  DovecotOptions Users() {
    DovecotOptions o;
    o.users.clear();
    for (const auto& [box, msgs] : expected_) o.users.push_back({box, "pw"});
    return o;
  }

  std::string tree_;
  std::map<std::string, std::map<std::string, TreeMessage>> expected_;
};

TEST_F(ImapFixtureReplay, UploadsEveryMessageOnceWithDateFlagsAndBytes) {
  ASSERT_NO_FATAL_FAILURE(WriteTree(3, 120));
  ASSERT_NO_FATAL_FAILURE(StartDovecot(Users()));
  std::string out;
  int rc = Replay(dovecot_->imap_port(), "--connections 2 --batch 50 --inflight 2", &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("\"messages\":360,"), std::string::npos) << out;
  EXPECT_NE(out.find("\"verified\":true"), std::string::npos) << out;
  ASSERT_NO_FATAL_FAILURE(CheckStored());
  // A second run into the same folders is detected by --verify (720 != 360).
  out.clear();
  EXPECT_NE(Replay(dovecot_->imap_port(), "", &out), 0) << out;
  EXPECT_NE(out.find("was it empty before?"), std::string::npos) << out;
}

TEST_F(ImapFixtureReplay, FallsBackWithoutLiteralPlusAndMultiappend) {
  ASSERT_NO_FATAL_FAILURE(WriteTree(2, 30));
  ASSERT_NO_FATAL_FAILURE(StartDovecot(Users()));
  FaultProxyOptions po;
  po.upstream_port = dovecot_->imap_port();
  po.hide_capabilities = {"LITERAL+", "MULTIAPPEND"};
  po.enforce_hidden = true;  // a {n+} or a second message would fail
  auto proxy = FaultProxy::Start(po);
  ASSERT_TRUE(proxy.ok());
  std::string out;
  int rc = Replay((*proxy)->port(), "--connections 2", &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("\"messages\":60,"), std::string::npos) << out;
  auto n = (*proxy)->counters();
  EXPECT_EQ(n.append_commands, 60u);  // one message per command
  EXPECT_EQ(n.enforced, 0u);
  ASSERT_NO_FATAL_FAILURE(CheckStored());
}

}  // namespace
}  // namespace wxa::test
