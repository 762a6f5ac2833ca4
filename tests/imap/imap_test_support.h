// Shared by the ImapFixture* suites: a gtest base that starts Dovecot and
// prints the tail of its log when a test fails, and message builders.
#pragma once

#include <gtest/gtest.h>

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "tests/imap/dovecot_fixture.h"
#include "tests/imap/imap_test_client.h"

namespace wxa::test {

class DovecotTest : public ::testing::Test {
 protected:
  // Use as ASSERT_NO_FATAL_FAILURE(StartDovecot(o)).
  void StartDovecot(DovecotOptions o = {}) {
    auto f = DovecotFixture::Start(std::move(o));
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    dovecot_ = std::move(*f);
  }
  void TearDown() override {
    if (HasFailure() && dovecot_ != nullptr) {
      std::cerr << "---- tail of " << dovecot_->log_path() << " ----\n"
                << dovecot_->LogTail(60) << "----\n";
    }
  }
  // A client on `port` (default: Dovecot's plain port), asserted connected.
  std::unique_ptr<ImapTestClient> Connect(uint16_t port = 0) {
    auto c = ImapTestClient::Connect(port != 0 ? port : dovecot_->imap_port());
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(*c) : nullptr;
  }

  std::unique_ptr<DovecotFixture> dovecot_;
};

// A small RFC 5322 message (CRLF) with Message-ID <id@wxa.test> and a body
// of about `body_bytes`, including 8-bit bytes and a long line.
inline std::string TestMessage(const std::string& id, size_t body_bytes = 300) {
  std::string m = "Message-ID: <" + id + "@wxa.test>\r\n"
                  "Date: Tue, 05 Mar 2024 16:00:00 +0800\r\n"
                  "From: \"Alice\" <alice@wxa.test>\r\n"
                  "To: bob@wxa.test\r\n"
                  "Subject: test " + id + "\r\n"
                  "MIME-Version: 1.0\r\n"
                  "Content-Type: text/plain; charset=utf-8\r\n"
                  "Content-Transfer-Encoding: 8bit\r\n"
                  "\r\n";
  std::string body;
  size_t line = 0;
  while (body.size() < body_bytes) {
    body += "line " + std::to_string(line) + " of " + id + " \xe4\xb8\xad\xe6\x96\x87 ";
    if (line % 7 == 3) body += std::string(200, 'x');  // a long line
    body += "\r\n";
    ++line;
  }
  return m + body;
}

inline std::string MessageId(const std::string& id) { return "<" + id + "@wxa.test>"; }

inline std::vector<std::string> Ids(const MailboxCensus& c) {
  std::vector<std::string> out;
  for (const auto& m : c.messages) out.push_back(m.message_id);
  return out;
}

}  // namespace wxa::test
