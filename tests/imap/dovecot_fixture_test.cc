// The fixture itself: storages, logins (plain, master user via SASL PLAIN
// authzid), TLS verified against the fixture's CA, capability modes,
// APPENDLIMIT, doveadm helpers, the census, and process cleanup.
#include "tests/imap/dovecot_fixture.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/imap/imap_test_support.h"
#include "tests/imap/test_tls.h"

namespace wxa::test {
namespace {

namespace fs = std::filesystem;

constexpr const char* kFolder = "WeChat Archiver";
// 05-Mar-2024 16:00:00 +0800 = 08:00:00 UTC.
constexpr int64_t kMarch5 = 1709625600;

std::string PreLoginDefault() {
  return "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN AUTH=LOGIN";
}

std::string RunShell(const std::string& cmd, int* rc) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) {
    *rc = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = ::pclose(p);
  *rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return out;
}

std::vector<int> ProcessesMentioning(const std::string& needle) {
  std::vector<int> pids;
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    if (ProcCmdline(std::stoi(name)).find(needle) != std::string::npos) pids.push_back(std::stoi(name));
  }
  return pids;
}

class ImapFixture : public DovecotTest {
 protected:
  // CREATE + APPEND of one message dated March 5, then the census.
  void AppendAndCheck(MailStorage storage) {
    DovecotOptions o;
    o.storage = storage;
    ASSERT_NO_FATAL_FAILURE(StartDovecot(o));
    auto c = Connect();
    ASSERT_NE(c, nullptr);
    ASSERT_TRUE(c->Login("u1", "pw1").ok());
    auto cr = c->Command(std::string("CREATE ") + ImapQuote(kFolder));
    ASSERT_TRUE(cr.ok() && cr->ok()) << cr->Dump();
    std::string msg = TestMessage("m1");
    auto ap = c->Append(kFolder, msg, "\\Seen", "05-Mar-2024 16:00:00 +0800");
    ASSERT_TRUE(ap.ok()) << ap.status().ToString();
    ASSERT_TRUE(ap->ok()) << ap->Dump();
    EXPECT_EQ(ap->code().rfind("APPENDUID ", 0), 0u) << ap->status;

    auto census = dovecot_->Census("u1", kFolder);
    ASSERT_TRUE(census.ok()) << census.status().ToString();
    ASSERT_EQ(census->messages.size(), 1u);
    const StoredMessage& m = census->messages[0];
    EXPECT_EQ(m.message_id, MessageId("m1"));
    EXPECT_EQ(m.internal_date, kMarch5);
    // Dovecot keeps the instant, not the zone: shown in its TZ (UTC here).
    EXPECT_EQ(m.internal_date_text, "05-Mar-2024 08:00:00 +0000");
    EXPECT_EQ(m.flags, std::vector<std::string>{"\\Seen"});
    EXPECT_EQ(m.text, msg);  // byte-exact, CRLF included
    EXPECT_EQ(m.size, msg.size());
    EXPECT_GT(census->uidvalidity, 0u);
    EXPECT_TRUE(CheckExactlyOnce({MessageId("m1")}, *census).ok());

    // doveadm sees the same message (dates in UTC: the fixture sets TZ).
    auto rows = dovecot_->DoveadmFetch("u1", {"uid", "hdr.message-id", "date.received", "flags"},
                                       kFolder);
    ASSERT_TRUE(rows.ok()) << rows.status().ToString();
    ASSERT_EQ(rows->size(), 1u);
    EXPECT_EQ((*rows)[0]["hdr.message-id"], MessageId("m1"));
    EXPECT_EQ((*rows)[0]["date.received"], "2024-03-05 08:00:00");
    EXPECT_NE((*rows)[0]["flags"].find("\\Seen"), std::string::npos);
    auto search = dovecot_->Doveadm({"search", "-u", "u1", "mailbox", kFolder, "all"});
    ASSERT_TRUE(search.ok()) << search.status().ToString();
    EXPECT_EQ(std::count(search->begin(), search->end(), '\n'), 1);
    auto count = dovecot_->MessageCount("u1", kFolder);
    ASSERT_TRUE(count.ok()) << count.status().ToString();
    EXPECT_EQ(*count, 1u);
    auto boxes = dovecot_->ListMailboxes("u1");
    ASSERT_TRUE(boxes.ok());
    EXPECT_NE(std::find(boxes->begin(), boxes->end(), kFolder), boxes->end());
  }
};

TEST_F(ImapFixture, MaildirLoginAppendCensus) {
  ASSERT_NO_FATAL_FAILURE(AppendAndCheck(MailStorage::kMaildir));
  // Maildir++: the folder is ".WeChat Archiver" with the message in cur/ or new/.
  std::string folder = dovecot_->mail_dir("u1") + "/.WeChat Archiver";
  EXPECT_TRUE(fs::is_directory(folder + "/cur")) << folder;
  size_t files = 0;
  for (const char* sub : {"/cur", "/new"}) {
    for (const auto& e : fs::directory_iterator(folder + sub)) files += e.is_regular_file();
  }
  EXPECT_EQ(files, 1u);
  EXPECT_NE(dovecot_->ConfigText().find("mail_location = maildir:~/Maildir"), std::string::npos);
}

TEST_F(ImapFixture, MdboxLoginAppendCensus) {
  ASSERT_NO_FATAL_FAILURE(AppendAndCheck(MailStorage::kMdbox));
  EXPECT_TRUE(fs::is_directory(dovecot_->mail_dir("u1") + "/storage"));
  EXPECT_TRUE(fs::is_directory(dovecot_->mail_dir("u1") + "/mailboxes/WeChat Archiver"));
}

TEST_F(ImapFixture, MasterUserSaslPlainAuthzid) {
  DovecotOptions o;
  o.users = {{"u1", "pw1"}, {"u2", "pw2"}};
  o.master = {"archiver", "s3cret"};
  ASSERT_NO_FATAL_FAILURE(StartDovecot(o));

  // authcid = master, authzid = u2: the session is u2's.
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->AuthenticatePlain("u2", "archiver", "s3cret").ok());
  ASSERT_TRUE(c->Command(std::string("CREATE ") + ImapQuote(kFolder))->ok());
  ASSERT_TRUE(c->Append(kFolder, TestMessage("via-master"))->ok());
  auto u2 = dovecot_->Census("u2", kFolder);
  ASSERT_TRUE(u2.ok()) << u2.status().ToString();
  EXPECT_EQ(Ids(*u2), std::vector<std::string>{MessageId("via-master")});
  EXPECT_TRUE(dovecot_->Census("u1", kFolder).status().IsNotFound());
  EXPECT_NE(dovecot_->LogTail(50).find("user=<u2>, method=PLAIN"), std::string::npos);

  // LOGIN "user*master" is the same master login in Dovecot's syntax.
  auto c2 = Connect();
  ASSERT_TRUE(c2->Login("u1*archiver", "s3cret").ok());
  // Wrong master password, unknown target (pass = yes looks it up), and a
  // normal user trying to act for another user: all refused.
  auto bad1 = Connect();
  EXPECT_FALSE(bad1->AuthenticatePlain("u2", "archiver", "wrong").ok());
  auto bad2 = Connect();
  EXPECT_FALSE(bad2->AuthenticatePlain("no-such-user", "archiver", "s3cret").ok());
  auto bad3 = Connect();
  EXPECT_FALSE(bad3->AuthenticatePlain("u2", "u1", "pw1").ok());
  // Users keep their own passwords; empty authzid = log in as authcid.
  auto own = Connect();
  EXPECT_TRUE(own->AuthenticatePlain("", "u1", "pw1").ok());
}

TEST_F(ImapFixture, StartTlsVerifiedAgainstCa) {
  ASSERT_NO_FATAL_FAILURE(StartDovecot());
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  EXPECT_NE(c->last_capabilities().find("STARTTLS"), std::string::npos);
  Status s = c->StartTls({dovecot_->ca_file(), "127.0.0.1"});
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(c->tls());
  auto cap = c->Command("CAPABILITY");
  ASSERT_TRUE(cap.ok() && cap->ok());
  EXPECT_EQ(c->last_capabilities().find("STARTTLS"), std::string::npos) << c->last_capabilities();
  ASSERT_TRUE(c->Login("u1", "pw1").ok());

  // The certificate is valid for "localhost" too, and for nothing else.
  auto by_name = Connect();
  EXPECT_TRUE(by_name->StartTls({dovecot_->ca_file(), "localhost"}).ok());
  auto wrong_name = Connect();
  Status w = wrong_name->StartTls({dovecot_->ca_file(), "mail.example.com"});
  EXPECT_FALSE(w.ok());
  EXPECT_NE(w.ToString().find("verif"), std::string::npos) << w.ToString();

  // Another CA does not verify it.
  auto other = MakeTestPki({"localhost"}, {"127.0.0.1"});
  ASSERT_TRUE(other.ok());
  std::string other_ca = dovecot_->dir() + "/other-ca.pem";
  std::ofstream(other_ca) << other->ca_cert_pem;
  auto untrusted = Connect();
  Status u = untrusted->StartTls({other_ca, "127.0.0.1"});
  EXPECT_FALSE(u.ok());
  EXPECT_NE(u.ToString().find("certificate verification failed"), std::string::npos) << u.ToString();
}

TEST_F(ImapFixture, ImapsVerifiedAgainstCa) {
  ASSERT_NO_FATAL_FAILURE(StartDovecot());
  ImapTlsOptions tls{dovecot_->ca_file(), "127.0.0.1"};
  auto c = ImapTestClient::Connect(dovecot_->imaps_port(), &tls);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE((*c)->tls());
  EXPECT_FALSE((*c)->tls_version().empty());
  EXPECT_EQ((*c)->last_capabilities().find("STARTTLS"), std::string::npos);
  EXPECT_TRUE((*c)->AuthenticatePlain("u1", "wxa-master", "master-secret").ok());
}

TEST_F(ImapFixture, OpensslSClientVerifiesBothPorts) {
  ASSERT_NO_FATAL_FAILURE(StartDovecot());
  const std::string common = " -CAfile " + dovecot_->ca_file() +
                             " -verify_return_error -verify_ip 127.0.0.1 -brief </dev/null";
  int rc = 0;
  std::string out = RunShell("openssl s_client -connect 127.0.0.1:" +
                            std::to_string(dovecot_->imap_port()) + " -starttls imap" + common,
                        &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("Verification: OK"), std::string::npos) << out;
  out = RunShell("openssl s_client -connect 127.0.0.1:" + std::to_string(dovecot_->imaps_port()) + common,
            &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("Verification: OK"), std::string::npos) << out;
}

TEST_F(ImapFixture, DefaultCapabilities) {
  ASSERT_NO_FATAL_FAILURE(StartDovecot());
  auto c = Connect();
  EXPECT_EQ(c->last_capabilities(), PreLoginDefault());
  ASSERT_TRUE(c->Login("u1", "pw1").ok());
  std::string post = c->last_capabilities();  // from the LOGIN reply's [CAPABILITY ...]
  EXPECT_EQ(post, std::string(kDovecot23Capabilities) + " LITERAL+ NOTIFY");
  ASSERT_TRUE(c->Command("CAPABILITY")->ok());
  EXPECT_EQ(c->last_capabilities(), post);
  std::cout << "pre-login:  " << PreLoginDefault() << "\npost-login: " << post << "\n";
}

TEST_F(ImapFixture, HiddenCapabilitiesAreNotAdvertised) {
  DovecotOptions o;
  o.hide_capabilities = {"LITERAL+", "MULTIAPPEND", "UIDPLUS"};
  ASSERT_NO_FATAL_FAILURE(StartDovecot(o));
  std::string expected;
  for (const auto& cap : SplitWords(std::string(kDovecot23Capabilities) + " LITERAL+ NOTIFY")) {
    if (cap != "LITERAL+" && cap != "MULTIAPPEND" && cap != "UIDPLUS") {
      expected += (expected.empty() ? "" : " ") + cap;
    }
  }
  auto c = Connect();
  // An explicit imap_capability is used before login too; imap-login only
  // adds STARTTLS and the AUTH= mechanisms.
  EXPECT_EQ(c->last_capabilities(), expected + " STARTTLS AUTH=PLAIN AUTH=LOGIN");
  ASSERT_TRUE(c->Login("u1", "pw1").ok());
  EXPECT_EQ(c->last_capabilities(), expected);
  ASSERT_TRUE(c->Command("CAPABILITY")->ok());
  for (const char* hidden : {"LITERAL+", "MULTIAPPEND", "UIDPLUS", "LITERAL-"}) {
    EXPECT_EQ(c->last_capabilities().find(hidden), std::string::npos) << hidden;
  }
  std::cout << "hidden, pre-login:  " << expected << " STARTTLS AUTH=PLAIN AUTH=LOGIN\n"
            << "hidden, post-login: " << expected << "\n";

  // Hiding is advertisement only: Dovecot still takes {n+} literals and
  // several messages per APPEND, and still answers APPENDUID. (FaultProxy
  // with enforce_hidden refuses them.)
  ASSERT_TRUE(c->Command(std::string("CREATE ") + ImapQuote(kFolder))->ok());
  auto r = c->MultiAppend(kFolder, {TestMessage("h1"), TestMessage("h2")}, "\\Seen",
                          LiteralMode::kNonSync);
  ASSERT_TRUE(r.ok() && r->ok()) << r->Dump();
  EXPECT_EQ(r->code().rfind("APPENDUID ", 0), 0u) << r->status;
}

TEST_F(ImapFixture, LiteralMinus) {
  DovecotOptions o;
  o.literal_minus = true;
  ASSERT_NO_FATAL_FAILURE(StartDovecot(o));
  auto c = Connect();
  EXPECT_NE(c->last_capabilities().find("LITERAL-"), std::string::npos) << c->last_capabilities();
  EXPECT_EQ(c->last_capabilities().find("LITERAL+"), std::string::npos);
  ASSERT_TRUE(c->Login("u1", "pw1").ok());
  EXPECT_NE(c->last_capabilities().find("LITERAL-"), std::string::npos) << c->last_capabilities();
  ASSERT_TRUE(c->Command("CREATE Box")->ok());
  std::string small = TestMessage("small", 1000);
  std::string big = TestMessage("big", 6000);
  ASSERT_LE(small.size(), 4096u);
  EXPECT_TRUE(c->Append("Box", small, "", "", LiteralMode::kNonSync)->ok());
  EXPECT_TRUE(c->Append("Box", big, "", "", LiteralMode::kSync)->ok());
  // Over 4096 bytes a non-synchronizing literal ends the session.
  std::string tag = c->NextTag();
  ASSERT_TRUE(c->SendRaw(tag + " APPEND Box {" + std::to_string(big.size()) + "+}\r\n").ok());
  (void)c->SendRaw(big + "\r\n");
  auto r = c->ReadResponse();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, "* BYE [TOOBIG] Non-synchronizing literal size too large");
  auto census = dovecot_->Census("u1", "Box");
  ASSERT_TRUE(census.ok());
  EXPECT_EQ(Ids(*census), (std::vector<std::string>{MessageId("small"), MessageId("big")}));
}

TEST_F(ImapFixture, AppendLimitAdvertisedAndEnforced) {
  DovecotOptions o;
  o.append_limit = 3000;
  ASSERT_NO_FATAL_FAILURE(StartDovecot(o));
  auto c = Connect();
  EXPECT_NE(c->last_capabilities().find("APPENDLIMIT=3000"), std::string::npos)
      << c->last_capabilities();
  ASSERT_TRUE(c->Login("u1", "pw1").ok());
  EXPECT_NE(c->last_capabilities().find("APPENDLIMIT=3000"), std::string::npos)
      << c->last_capabilities();
  ASSERT_TRUE(c->Command("CREATE Box")->ok());
  // Exactly at the limit passes, one byte over does not.
  std::string at = TestMessage("at", 2600);
  at.resize(3000 - 2);
  at += "\r\n";
  std::string over = at;
  over.insert(over.size() - 2, "x");
  ASSERT_EQ(at.size(), 3000u);
  auto ok = c->Append("Box", at);
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(ok->ok()) << ok->Dump();
  auto no = c->Append("Box", over);
  ASSERT_TRUE(no.ok());
  EXPECT_EQ(no->status.rfind("NO [LIMIT] Mail size is larger than the maximum size allowed by server "
                             "configuration", 0),
            0u)
      << no->status;
  // A synchronizing literal is refused before its bytes are sent.
  auto sync_no = c->Append("Box", over, "", "", LiteralMode::kSync);
  ASSERT_TRUE(sync_no.ok());
  EXPECT_TRUE(sync_no->no()) << sync_no->Dump();
  // MULTIAPPEND is atomic: one oversize message fails the whole batch.
  auto batch = c->MultiAppend("Box", {TestMessage("b1"), over, TestMessage("b3")});
  ASSERT_TRUE(batch.ok());
  EXPECT_TRUE(batch->no()) << batch->Dump();
  auto census = dovecot_->Census("u1", "Box");
  ASSERT_TRUE(census.ok());
  EXPECT_EQ(census->messages.size(), 1u);
  EXPECT_EQ(census->messages[0].size, 3000u);
}

TEST_F(ImapFixture, ManyConnectionsPerUser) {
  ASSERT_NO_FATAL_FAILURE(StartDovecot());  // max_userip_connections = 128
  std::vector<std::unique_ptr<ImapTestClient>> clients;
  for (int i = 0; i < 24; ++i) {
    auto c = Connect();
    ASSERT_NE(c, nullptr);
    ASSERT_TRUE(c->Login("u1", "pw1").ok()) << "connection " << i;
    clients.push_back(std::move(c));
  }
  EXPECT_NE(dovecot_->ConfigText().find("mail_max_userip_connections = 128"), std::string::npos);
}

TEST_F(ImapFixture, ExtraConfigLinesApply) {
  DovecotOptions o;
  o.extra_config = {"login_greeting = wxa fixture ready"};
  ASSERT_NO_FATAL_FAILURE(StartDovecot(o));
  auto c = Connect();
  EXPECT_NE(c->greeting().find("wxa fixture ready"), std::string::npos) << c->greeting();
}

TEST_F(ImapFixture, CensusFindsLostDuplicatedAndExtra) {
  ASSERT_NO_FATAL_FAILURE(StartDovecot());
  auto c = dovecot_->LoginClient("u1");
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->Command("CREATE Box")->ok());
  for (const char* id : {"a", "b", "b", "c"}) {
    ASSERT_TRUE((*c)->Append("Box", TestMessage(id), "\\Seen \\Flagged", FormatImapDateTime(kMarch5))->ok());
  }
  auto census = dovecot_->Census("u1", "Box");
  ASSERT_TRUE(census.ok());
  ASSERT_EQ(census->messages.size(), 4u);
  EXPECT_EQ(census->messages[0].flags, (std::vector<std::string>{"\\Flagged", "\\Seen"}));
  EXPECT_EQ(census->messages[0].internal_date, kMarch5);
  EXPECT_EQ(census->messages[0].internal_date_text, "05-Mar-2024 08:00:00 +0000");
  Status dup = CheckExactlyOnce({MessageId("a"), MessageId("b"), MessageId("c")}, *census);
  EXPECT_EQ(dup.code(), Status::Code::kAlreadyExists) << dup.ToString();
  EXPECT_NE(dup.ToString().find(MessageId("b")), std::string::npos);
  Status lost = CheckExactlyOnce({MessageId("a"), MessageId("b"), MessageId("c"), MessageId("d")},
                                 *census);
  EXPECT_TRUE(lost.IsNotFound()) << lost.ToString();
  MailboxCensus deduped = *census;
  deduped.messages.erase(deduped.messages.begin() + 2);  // the second "b"
  EXPECT_TRUE(CheckExactlyOnce({MessageId("a"), MessageId("b"), MessageId("c")}, deduped).ok());
  Status extra = CheckExactlyOnce({MessageId("a"), MessageId("b")}, deduped);
  EXPECT_EQ(extra.code(), Status::Code::kCorruption) << extra.ToString();
  auto empty = dovecot_->Census("u1", "INBOX");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->messages.empty());
  EXPECT_TRUE(dovecot_->Census("u1", "Nope").status().IsNotFound());
}

TEST_F(ImapFixture, StopKillsEveryProcessAndRemovesTheDirectory) {
  ASSERT_NO_FATAL_FAILURE(StartDovecot());
  // Hold a logged-in session so an imap process exists at Stop().
  auto c = dovecot_->LoginClient("u1");
  ASSERT_TRUE(c.ok());
  std::string dir = dovecot_->dir();
  std::string instance = "dovecot-" + fs::path(dir).filename().string();
  EXPECT_GE(ProcessesMentioning(instance).size(), 3u);  // anvil, log, config, auth, imap...
  EXPECT_EQ(ProcessesMentioning(dir + "/dovecot.conf").size(), 1u);  // the master
  ASSERT_TRUE(dovecot_->Stop().ok());
  EXPECT_FALSE(dovecot_->running());
  EXPECT_TRUE(ProcessesMentioning(instance).empty());
  EXPECT_TRUE(ProcessesMentioning(dir + "/dovecot.conf").empty());
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_TRUE(dovecot_->Stop().ok());  // idempotent
}

TEST_F(ImapFixture, InstanceOfAKilledTestIsCleanedUp) {
  // wxa_dovecot stands in for a test process killed with SIGKILL.
  int out_pipe[2];
  ASSERT_EQ(::pipe(out_pipe), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::dup2(out_pipe[1], 1);
    ::close(out_pipe[0]);
    ::execl(WXA_DOVECOT_BIN, WXA_DOVECOT_BIN, "--storage", "maildir", static_cast<char*>(nullptr));
    _exit(127);
  }
  ::close(out_pipe[1]);
  std::string line;
  char ch;
  while (::read(out_pipe[0], &ch, 1) == 1 && ch != '\n') line.push_back(ch);
  ::close(out_pipe[0]);
  size_t d = line.find("\"dir\":\"");
  ASSERT_NE(d, std::string::npos) << line;
  std::string dir = line.substr(d + 7, line.find('"', d + 7) - d - 7);
  ASSERT_TRUE(fs::exists(dir + "/dovecot.conf"));
  ASSERT_EQ(ProcessesMentioning(dir + "/dovecot.conf").size(), 1u);

  ::kill(pid, SIGKILL);
  int st;
  ::waitpid(pid, &st, 0);
  // The master got SIGTERM from the kernel (parent death) and exits.
  for (int i = 0; i < 200 && !ProcessesMentioning(dir + "/dovecot.conf").empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(ProcessesMentioning(dir + "/dovecot.conf").empty());
  // The directory stays until a Start() sweeps (here, or in a test running
  // in parallel: either way it is gone afterwards).
  // Under load the master's last children (log, anvil) may outlive it for a
  // moment and write into the directory: sweep until it is gone, 5 s at most.
  for (int i = 0; i < 250 && fs::exists(dir); ++i) {
    SweepStaleDovecotInstances();
    if (fs::exists(dir)) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::string left;
  std::error_code ec;
  if (fs::exists(dir)) {
    for (const auto& e : fs::recursive_directory_iterator(dir, ec)) left += " " + e.path().string();
  }
  EXPECT_FALSE(fs::exists(dir)) << "left:" << left << "; owner.pid: " << [&] {
    std::ifstream in(dir + "/owner.pid");
    std::string pid;
    std::getline(in, pid);
    return pid;
  }();
}

TEST_F(ImapFixture, KillAndRestartKeepWhatWasStored) {
  ASSERT_NO_FATAL_FAILURE(StartDovecot());
  auto c = dovecot_->LoginClient("u1");
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->Command("CREATE Box")->ok());
  ASSERT_TRUE((*c)->Append("Box", TestMessage("k1"))->ok());
  uint16_t port = dovecot_->imap_port();
  ASSERT_TRUE(dovecot_->Kill().ok());
  EXPECT_FALSE(dovecot_->running());
  EXPECT_FALSE((*c)->Command("NOOP").ok());  // the session died with the server
  EXPECT_FALSE(ImapTestClient::Connect(port, nullptr, 500).ok());
  ASSERT_TRUE(dovecot_->Restart().ok()) << dovecot_->LogTail(20);
  EXPECT_EQ(dovecot_->imap_port(), port);
  auto census = dovecot_->Census("u1", "Box");
  ASSERT_TRUE(census.ok()) << census.status().ToString();
  EXPECT_EQ(Ids(*census), std::vector<std::string>{MessageId("k1")});
}

TEST_F(ImapFixture, PlainOnlyWithoutTls) {
  DovecotOptions o;
  o.tls = false;
  o.master = {};
  ASSERT_NO_FATAL_FAILURE(StartDovecot(o));
  EXPECT_EQ(dovecot_->imaps_port(), 0);
  EXPECT_TRUE(dovecot_->ca_file().empty());
  auto c = Connect();
  EXPECT_EQ(c->last_capabilities().find("STARTTLS"), std::string::npos);
  EXPECT_TRUE(c->Login("u1", "pw1").ok());
  // Without a master user the census logs in with the user's password.
  ASSERT_TRUE(c->Command("CREATE Box")->ok());
  ASSERT_TRUE(c->Append("Box", TestMessage("p1"))->ok());
  auto census = dovecot_->Census("u1", "Box");
  ASSERT_TRUE(census.ok()) << census.status().ToString();
  EXPECT_EQ(Ids(*census), std::vector<std::string>{MessageId("p1")});
}

}  // namespace
}  // namespace wxa::test
