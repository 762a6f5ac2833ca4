// FaultProxy against a real Dovecot: byte-exact pass-through, then each
// fault at its protocol point, proved by what Dovecot stored (the census).
#include "tests/imap/fault_proxy.h"

#include <chrono>
#include <thread>

#include "tests/imap/imap_test_support.h"

namespace wxa::test {
namespace {

using std::chrono::milliseconds;

constexpr const char* kBox = "WeChat Archiver";

class ImapFixtureProxy : public DovecotTest {
 protected:
  void StartBoth(FaultProxyOptions po = {}, DovecotOptions o = {}) {
    ASSERT_NO_FATAL_FAILURE(StartDovecot(o));
    po.upstream_port = dovecot_->imap_port();
    auto p = FaultProxy::Start(po);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    proxy_ = std::move(*p);
    // The folder exists before the proxy counts anything.
    auto c = dovecot_->LoginClient("u1");
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE((*c)->Command(std::string("CREATE ") + ImapQuote(kBox))->ok());
  }
  // Logged in as u1 through the proxy.
  std::unique_ptr<ImapTestClient> ProxyClient() {
    auto c = Connect(proxy_->port());
    if (c == nullptr) return nullptr;
    Status s = c->Login("u1", "pw1");
    EXPECT_TRUE(s.ok()) << s.ToString();
    return c;
  }
  std::vector<std::string> StoredIds(const std::string& user = "u1") {
    auto census = dovecot_->Census(user, kBox);
    EXPECT_TRUE(census.ok()) << census.status().ToString();
    return census.ok() ? Ids(*census) : std::vector<std::string>{};
  }
  // "<tag> APPEND box (\Seen) {n+}\r\n<msg>\r\n" for pipelining by hand.
  static std::string RawAppend(const std::string& tag, const std::string& msg) {
    return tag + " APPEND " + ImapQuote(kBox) + " (\\Seen) {" + std::to_string(msg.size()) +
           "+}\r\n" + msg + "\r\n";
  }
  // Reads responses until EOF; returns them.
  static std::vector<std::string> ReadUntilClosed(ImapTestClient* c) {
    std::vector<std::string> out;
    for (;;) {
      auto r = c->ReadResponse();
      if (!r.ok()) break;
      out.push_back(*r);
    }
    return out;
  }

  std::unique_ptr<FaultProxy> proxy_;
};

TEST_F(ImapFixtureProxy, PassThroughIsByteExact) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  auto c = ProxyClient();
  ASSERT_NE(c, nullptr);
  std::vector<std::string> msgs;
  for (int i = 0; i < 9; ++i) msgs.push_back(TestMessage("p" + std::to_string(i), 200 + 150 * i));
  msgs.push_back(TestMessage("big", 3 << 20));  // many reads and writes, backpressure
  for (auto& m : msgs) {
    // Every byte value but NUL, CR and LF alone, in the body.
    for (int b = 1; b < 256; ++b) {
      if (b != '\r' && b != '\n') m.insert(m.size() - 2, 1, static_cast<char>(b));
    }
  }
  uint64_t literal_bytes = 0;
  for (const auto& m : msgs) literal_bytes += m.size();
  // Synchronizing, LITERAL+, MULTIAPPEND both ways, and the big one.
  ASSERT_TRUE(c->Append(kBox, msgs[0], "\\Seen", "", LiteralMode::kSync)->ok());
  ASSERT_TRUE(c->Append(kBox, msgs[1], "\\Seen", "", LiteralMode::kNonSync)->ok());
  auto m1 = c->MultiAppend(kBox, {msgs[2], msgs[3], msgs[4]}, "\\Seen", LiteralMode::kNonSync);
  ASSERT_TRUE(m1.ok() && m1->ok()) << m1->Dump();
  auto m2 = c->MultiAppend(kBox, {msgs[5], msgs[6], msgs[7], msgs[8]}, "\\Seen", LiteralMode::kSync);
  ASSERT_TRUE(m2.ok() && m2->ok()) << m2->Dump();
  auto big = c->Append(kBox, msgs[9], "\\Seen", "", LiteralMode::kNonSync);
  ASSERT_TRUE(big.ok() && big->ok());

  // Read back through the proxy (server literals) and directly (census).
  ASSERT_TRUE(c->Command(std::string("EXAMINE ") + ImapQuote(kBox))->ok());
  auto fetch = c->Command("UID FETCH 1:* (BODY.PEEK[])");
  ASSERT_TRUE(fetch.ok() && fetch->ok());
  size_t fetched = 0;
  for (const auto& u : fetch->untagged) {
    if (u.find(" FETCH (") == std::string::npos) continue;
    size_t lit = u.find("}\r\n");
    ASSERT_NE(lit, std::string::npos);
    std::string body = u.substr(lit + 3, u.size() - lit - 3 - 1);  // without the closing ')'
    EXPECT_EQ(body, msgs[fetched]) << "message " << fetched << " differs through the proxy";
    ++fetched;
  }
  EXPECT_EQ(fetched, msgs.size());
  auto census = dovecot_->Census("u1", kBox);
  ASSERT_TRUE(census.ok());
  ASSERT_EQ(census->messages.size(), msgs.size());
  for (size_t i = 0; i < msgs.size(); ++i) EXPECT_EQ(census->messages[i].text, msgs[i]) << i;

  auto n = proxy_->counters();
  EXPECT_EQ(n.connections_accepted, 1u);
  EXPECT_EQ(n.append_commands, 5u);
  EXPECT_EQ(n.append_messages, msgs.size());
  EXPECT_EQ(n.append_literal_bytes_forwarded, literal_bytes);
  EXPECT_EQ(n.faults_fired, 0u);
  EXPECT_GT(n.bytes_server_to_client, literal_bytes);
}

TEST_F(ImapFixtureProxy, ResetInTheMiddleOfALiteral) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  proxy_->SetFaults({FaultRule::ResetInLiteral(2, 100)});
  auto c = ProxyClient();
  // Pipelined: #1 is answered before #2 starts (the proxy waits for a quiet
  // connection), #2 is cut after 100 bytes, #3 never reaches the server.
  std::string wire = RawAppend("a1", TestMessage("r1")) + RawAppend("a2", TestMessage("r2", 5000)) +
                     RawAppend("a3", TestMessage("r3"));
  (void)c->SendRaw(wire);  // may fail half-way: the connection is reset
  auto seen = ReadUntilClosed(c.get());
  ASSERT_GE(seen.size(), 1u);
  EXPECT_EQ(seen[0].rfind("a1 OK [APPENDUID ", 0), 0u) << seen[0];
  EXPECT_TRUE(c->closed());
  EXPECT_EQ(StoredIds(), std::vector<std::string>{MessageId("r1")});
  auto n = proxy_->counters();
  EXPECT_EQ(n.resets, 1u);
  EXPECT_EQ(n.faults_fired, 1u);
  // One-shot: the next connection works, APPEND #4 goes through.
  auto c2 = ProxyClient();
  ASSERT_TRUE(c2->Append(kBox, TestMessage("r4"))->ok());
  EXPECT_EQ(StoredIds(), (std::vector<std::string>{MessageId("r1"), MessageId("r4")}));
}

TEST_F(ImapFixtureProxy, ResetAfterZeroBytesOfASynchronizingLiteral) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  proxy_->SetFaults({FaultRule::ResetInLiteral(1, 0)});
  auto c = ProxyClient();
  auto r = c->Append(kBox, TestMessage("s1"), "\\Seen", "", LiteralMode::kSync);
  EXPECT_FALSE(r.ok());  // got "+", sent the data, then the reset
  EXPECT_TRUE(StoredIds().empty());
  EXPECT_EQ(proxy_->counters().resets, 1u);
}

TEST_F(ImapFixtureProxy, StallHoldsRepliesForADuration) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  proxy_->SetFaults({FaultRule::Stall(2, milliseconds(700))});
  auto c = ProxyClient();
  ASSERT_TRUE(c->Append(kBox, TestMessage("t1"))->ok());
  auto t0 = std::chrono::steady_clock::now();
  auto r = c->Append(kBox, TestMessage("t2"));
  auto waited = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(r.ok() && r->ok());
  EXPECT_GE(waited, milliseconds(650));
  // The server had stored it long before the client heard.
  EXPECT_EQ(StoredIds(), (std::vector<std::string>{MessageId("t1"), MessageId("t2")}));
  EXPECT_EQ(proxy_->counters().stalls, 1u);
}

TEST_F(ImapFixtureProxy, StallForeverTimesTheClientOut) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  proxy_->SetFaults({FaultRule::Stall(1, milliseconds(0))});
  auto c = ProxyClient();
  c->set_timeout_ms(400);
  auto r = c->Append(kBox, TestMessage("f1"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().ToString().find("timed out"), std::string::npos) << r.status().ToString();
  EXPECT_EQ(StoredIds(), std::vector<std::string>{MessageId("f1")});  // in doubt, but stored
  // Other connections are not affected.
  auto c2 = ProxyClient();
  EXPECT_TRUE(c2->Command("NOOP")->ok());
}

TEST_F(ImapFixtureProxy, ByeAfterOkStoresButNeverAcknowledges) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  proxy_->SetFaults({FaultRule::ByeAfterOk(2)});
  auto c = ProxyClient();
  std::string wire = RawAppend("a1", TestMessage("b1")) + RawAppend("a2", TestMessage("b2")) +
                     RawAppend("a3", TestMessage("b3"));
  ASSERT_TRUE(c->SendRaw(wire).ok());
  auto seen = ReadUntilClosed(c.get());
  ASSERT_EQ(seen.size(), 2u) << (seen.empty() ? "" : seen.back());
  EXPECT_EQ(seen[0].rfind("a1 OK [APPENDUID ", 0), 0u) << seen[0];
  EXPECT_EQ(seen[1], "* BYE Server shutting down (injected)");
  // #2 is stored although its OK never arrived; #3 never reached the server.
  EXPECT_EQ(StoredIds(), (std::vector<std::string>{MessageId("b1"), MessageId("b2")}));
  auto n = proxy_->counters();
  EXPECT_EQ(n.byes_after_ok, 1u);
  EXPECT_EQ(n.append_commands, 2u);  // #3 was never even read as a command
}

TEST_F(ImapFixtureProxy, ByeBeforeForwardLosesOnlyThatAppend) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  FaultRule r = FaultRule::ByeBeforeForward(2);
  r.response = "Server restarting";
  proxy_->SetFaults({r});
  auto c = ProxyClient();
  std::string wire = RawAppend("a1", TestMessage("c1")) + RawAppend("a2", TestMessage("c2")) +
                     RawAppend("a3", TestMessage("c3"));
  ASSERT_TRUE(c->SendRaw(wire).ok());
  auto seen = ReadUntilClosed(c.get());
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].rfind("a1 OK", 0), 0u) << seen[0];
  EXPECT_EQ(seen[1], "* BYE Server restarting");
  EXPECT_EQ(StoredIds(), std::vector<std::string>{MessageId("c1")});
  EXPECT_EQ(proxy_->counters().byes_before_forward, 1u);
}

TEST_F(ImapFixtureProxy, RejectAnswersInOrderAndSwallowsTheLiterals) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  proxy_->SetFaults({FaultRule::RejectLimit(2)});
  auto c = ProxyClient();
  // Pipelined; #2 is a MULTIAPPEND with LITERAL+ whose bytes must vanish.
  std::string m2 = "a2 APPEND " + ImapQuote(kBox) + " {" + std::to_string(TestMessage("d2").size()) +
                   "+}\r\n" + TestMessage("d2") + " {" + std::to_string(TestMessage("d2b").size()) +
                   "+}\r\n" + TestMessage("d2b") + "\r\n";
  ASSERT_TRUE(c->SendRaw(RawAppend("a1", TestMessage("d1")) + m2 + RawAppend("a3", TestMessage("d3")))
                  .ok());
  std::vector<std::string> tagged;
  for (int i = 0; i < 3; ++i) {
    auto r = c->ReadResponse();
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    tagged.push_back(*r);
  }
  EXPECT_EQ(tagged[0].rfind("a1 OK", 0), 0u) << tagged[0];
  EXPECT_EQ(tagged[1], "a2 NO [LIMIT] Message too large (injected)");
  EXPECT_EQ(tagged[2].rfind("a3 OK", 0), 0u) << tagged[2];
  // A synchronizing literal is refused instead of "+": its bytes never go.
  proxy_->SetFaults({FaultRule::RejectLimit(4)});
  auto r4 = c->Append(kBox, TestMessage("d4"), "\\Seen", "", LiteralMode::kSync);
  ASSERT_TRUE(r4.ok());
  EXPECT_EQ(r4->status, "NO [LIMIT] Message too large (injected)");
  EXPECT_TRUE(c->Command("NOOP")->ok());  // the stream is still in step
  EXPECT_EQ(StoredIds(), (std::vector<std::string>{MessageId("d1"), MessageId("d3")}));
  EXPECT_EQ(proxy_->counters().rejects, 2u);
}

TEST_F(ImapFixtureProxy, ThrottlingRepliesForANumberOfTimes) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  proxy_->SetFaults({FaultRule::Unavailable(1, 2), FaultRule::ExchangeThrottle(4, 1, 1500)});
  auto c = ProxyClient();
  std::vector<std::string> statuses;
  for (int i = 1; i <= 5; ++i) {
    auto r = c->Append(kBox, TestMessage("e" + std::to_string(i)));
    ASSERT_TRUE(r.ok());
    statuses.push_back(r->status.substr(0, r->status.find(" (")));
  }
  EXPECT_EQ(statuses[0], "NO [UNAVAILABLE] Server busy, try again later");
  EXPECT_EQ(statuses[1], "NO [UNAVAILABLE] Server busy, try again later");
  EXPECT_EQ(statuses[2].rfind("OK [APPENDUID", 0), 0u) << statuses[2];
  EXPECT_EQ(statuses[3], "BAD Request is throttled. Suggested Backoff Time: 1500 milliseconds");
  EXPECT_EQ(statuses[4].rfind("OK", 0), 0u);
  EXPECT_EQ(StoredIds(), (std::vector<std::string>{MessageId("e3"), MessageId("e5")}));
  EXPECT_EQ(proxy_->counters().rejects, 3u);
  EXPECT_TRUE(proxy_->WaitForFaults(3, milliseconds(10)));
}

TEST_F(ImapFixtureProxy, CapabilitiesRewrittenEverywhere) {
  FaultProxyOptions po;
  po.hide_capabilities = {"LITERAL+", "MULTIAPPEND", "UIDPLUS"};
  po.add_capabilities = {"APPENDLIMIT=5000"};
  ASSERT_NO_FATAL_FAILURE(StartBoth(po));
  auto c = Connect(proxy_->port());
  auto check = [&](const std::string& caps, const char* where) {
    for (const char* h : {"LITERAL+", "MULTIAPPEND", "UIDPLUS"}) {
      EXPECT_EQ(caps.find(h), std::string::npos) << where << ": " << caps;
    }
    EXPECT_NE(caps.find("APPENDLIMIT=5000"), std::string::npos) << where << ": " << caps;
    EXPECT_NE(caps.find("IMAP4rev1"), std::string::npos) << where << ": " << caps;
  };
  check(c->last_capabilities(), "greeting");
  ASSERT_TRUE(c->Command("CAPABILITY")->ok());
  check(c->last_capabilities(), "CAPABILITY before login");
  EXPECT_NE(c->last_capabilities().find("STARTTLS"), std::string::npos);
  ASSERT_TRUE(c->Login("u1", "pw1").ok());
  check(c->last_capabilities(), "CAPABILITY after login");
  ASSERT_TRUE(c->Command("CAPABILITY")->ok());
  check(c->last_capabilities(), "CAPABILITY command after login");
  // Without UIDPLUS there is no APPENDUID either.
  auto r = c->Append(kBox, TestMessage("cap1"), "\\Seen", "", LiteralMode::kSync);
  ASSERT_TRUE(r.ok() && r->ok()) << r->Dump();
  EXPECT_EQ(r->status.rfind("OK Append completed", 0), 0u) << r->status;
  EXPECT_EQ(StoredIds(), std::vector<std::string>{MessageId("cap1")});
}

TEST_F(ImapFixtureProxy, HiddenLiteralPlusIsEnforced) {
  FaultProxyOptions po;
  po.hide_capabilities = {"LITERAL+"};
  ASSERT_NO_FATAL_FAILURE(StartBoth(po));
  auto c = ProxyClient();
  auto r = c->Append(kBox, TestMessage("l1"), "\\Seen", "", LiteralMode::kNonSync);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->bad()) << r->Dump();
  EXPECT_NE(r->status.find("LITERAL+"), std::string::npos);
  EXPECT_TRUE(c->Command("NOOP")->ok());  // literal swallowed, stream in step
  EXPECT_TRUE(c->Append(kBox, TestMessage("l2"), "\\Seen", "", LiteralMode::kSync)->ok());
  EXPECT_EQ(StoredIds(), std::vector<std::string>{MessageId("l2")});
  EXPECT_EQ(proxy_->counters().enforced, 1u);

  // LITERAL- kept (added here): {n+} allowed up to 4096 bytes only.
  proxy_->SetHiddenCapabilities({"LITERAL+"}, {"LITERAL-"});
  auto c2 = ProxyClient();
  EXPECT_NE(c2->last_capabilities().find("LITERAL-"), std::string::npos);
  EXPECT_TRUE(c2->Append(kBox, TestMessage("l3", 1000), "", "", LiteralMode::kNonSync)->ok());
  EXPECT_TRUE(c2->Append(kBox, TestMessage("l4", 6000), "", "", LiteralMode::kNonSync)->bad());
}

TEST_F(ImapFixtureProxy, HiddenMultiappendIsEnforcedAtomically) {
  FaultProxyOptions po;
  po.hide_capabilities = {"MULTIAPPEND"};
  ASSERT_NO_FATAL_FAILURE(StartBoth(po));
  auto c = ProxyClient();
  for (LiteralMode mode : {LiteralMode::kNonSync, LiteralMode::kSync}) {
    auto r = c->MultiAppend(kBox, {TestMessage("x1"), TestMessage("x2"), TestMessage("x3")}, "\\Seen",
                            mode);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(r->bad()) << r->Dump();  // Dovecot's own BAD: the proxy ended the command
    EXPECT_TRUE(c->Command("NOOP")->ok());
  }
  EXPECT_TRUE(c->Append(kBox, TestMessage("single"))->ok());
  EXPECT_EQ(StoredIds(), std::vector<std::string>{MessageId("single")});
  EXPECT_EQ(proxy_->counters().enforced, 2u);
}

TEST_F(ImapFixtureProxy, FaultsCountPerUser) {
  DovecotOptions o;
  o.users = {{"u1", "pw1"}, {"u2", "pw2"}};
  FaultRule r = FaultRule::RejectLimit(2);
  r.user = "u2";
  FaultProxyOptions po;
  po.faults = {r};
  ASSERT_NO_FATAL_FAILURE(StartBoth(po, o));
  auto a = Connect(proxy_->port());
  ASSERT_TRUE(a->AuthenticatePlain("u1", "wxa-master", "master-secret").ok());
  auto b = Connect(proxy_->port());
  ASSERT_TRUE(b->Login("u2*wxa-master", "master-secret").ok());  // counts as u2
  ASSERT_TRUE(b->Command(std::string("CREATE ") + ImapQuote(kBox))->ok());
  for (int i = 1; i <= 3; ++i) {
    EXPECT_TRUE(a->Append(kBox, TestMessage("ua" + std::to_string(i)))->ok());
  }
  EXPECT_TRUE(b->Append(kBox, TestMessage("ub1"))->ok());
  EXPECT_TRUE(b->Append(kBox, TestMessage("ub2"))->no());
  EXPECT_TRUE(b->Append(kBox, TestMessage("ub3"))->ok());
  EXPECT_EQ(StoredIds("u1").size(), 3u);
  EXPECT_EQ(StoredIds("u2"), (std::vector<std::string>{MessageId("ub1"), MessageId("ub3")}));
}

TEST_F(ImapFixtureProxy, RejectConnectionGreetsWithBye) {
  FaultProxyOptions po;
  po.faults = {FaultRule::RejectConnection(1)};
  ASSERT_NO_FATAL_FAILURE(StartBoth(po));
  auto refused = ImapTestClient::Connect(proxy_->port());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().ToString().find("* BYE Too many connections (injected)"),
            std::string::npos)
      << refused.status().ToString();
  auto c = ProxyClient();
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->Command("NOOP")->ok());
  auto n = proxy_->counters();
  EXPECT_EQ(n.connections_accepted, 2u);
  EXPECT_EQ(n.connections_rejected, 1u);
}

TEST_F(ImapFixtureProxy, StartTlsPassesThroughVerified) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  auto c = Connect(proxy_->port());
  Status s = c->StartTls({dovecot_->ca_file(), "127.0.0.1"});
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_TRUE(c->Login("u1", "pw1").ok());
  ASSERT_TRUE(c->Append(kBox, TestMessage("tls1"))->ok());
  EXPECT_EQ(StoredIds(), std::vector<std::string>{MessageId("tls1")});
  // Opaque after STARTTLS: the APPEND inside TLS is not seen.
  EXPECT_EQ(proxy_->counters().append_commands, 0u);
}

TEST_F(ImapFixtureProxy, HiddenStartTlsKeepsClientsInPlaintext) {
  FaultProxyOptions po;
  po.hide_capabilities = {"STARTTLS"};
  po.faults = {FaultRule::RejectLimit(1)};
  ASSERT_NO_FATAL_FAILURE(StartBoth(po));
  auto c = Connect(proxy_->port());
  EXPECT_EQ(c->last_capabilities().find("STARTTLS"), std::string::npos) << c->last_capabilities();
  auto st = c->Command("STARTTLS");
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(st->bad()) << st->Dump();
  ASSERT_TRUE(c->Login("u1", "pw1").ok());
  EXPECT_TRUE(c->Append(kBox, TestMessage("pt1"))->no());  // faults apply
  EXPECT_TRUE(c->Append(kBox, TestMessage("pt2"))->ok());
}

TEST_F(ImapFixtureProxy, DropAllConnectionsResetsClients) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  auto c = ProxyClient();
  ASSERT_TRUE(c->Command("NOOP")->ok());
  proxy_->DropAllConnections();
  auto r = c->Command("NOOP");
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(c->closed());
  auto c2 = ProxyClient();
  EXPECT_TRUE(c2->Command("NOOP")->ok());
  EXPECT_EQ(proxy_->counters().connections_open, 1u);
}

}  // namespace
}  // namespace wxa::test
