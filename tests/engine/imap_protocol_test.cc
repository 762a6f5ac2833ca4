// The IMAP grammar pieces of the upload client, against RFC 3501/3502/4315/
// 7888 examples and what Dovecot and Exchange Online really send.
#include <gtest/gtest.h>

#include "engine/sinks/imap/imap_protocol.h"

namespace wxa::sinks::imap {
namespace {

TEST(ImapProtocol, ParsesTaggedUntaggedAndContinuations) {
  Response r = ParseResponse("A003 OK [APPENDUID 38505 3955] APPEND completed");
  EXPECT_EQ(r.kind, Response::Kind::kTagged);
  EXPECT_EQ(r.tag, "A003");
  EXPECT_EQ(r.status, "OK");
  EXPECT_EQ(r.code, "APPENDUID 38505 3955");
  EXPECT_EQ(r.text, "APPEND completed");
  r = ParseResponse("* 172 EXISTS");
  EXPECT_EQ(r.kind, Response::Kind::kUntagged);
  EXPECT_EQ(r.number, 172u);
  EXPECT_EQ(r.status, "EXISTS");
  r = ParseResponse("* OK [UIDVALIDITY 3857529045] UIDs valid");
  EXPECT_EQ(ParseUidValidity(r.code), 3857529045u);
  r = ParseResponse("+ Ready for literal data");
  EXPECT_EQ(r.kind, Response::Kind::kContinuation);
  EXPECT_EQ(r.text, "Ready for literal data");
  r = ParseResponse("+");
  EXPECT_EQ(r.kind, Response::Kind::kContinuation);
  r = ParseResponse("A1 no [OVERQUOTA] Quota exceeded");
  EXPECT_EQ(r.status, "NO");
  EXPECT_EQ(r.code, "OVERQUOTA");
  r = ParseResponse("* BYE Autologout; idle for too long");
  EXPECT_EQ(r.status, "BYE");
  EXPECT_TRUE(IsTemporary(r));
}

TEST(ImapProtocol, Capabilities) {
  auto caps = ParseCapabilities("CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN multiappend APPENDLIMIT=35651584");
  EXPECT_TRUE(caps.count("LITERAL+"));
  EXPECT_TRUE(caps.count("MULTIAPPEND"));
  EXPECT_TRUE(caps.count("AUTH=PLAIN"));
  EXPECT_TRUE(caps.count("APPENDLIMIT=35651584"));
  EXPECT_FALSE(caps.count("CAPABILITY"));
}

TEST(ImapProtocol, AppendUidSets) {
  auto u = ParseAppendUid("APPENDUID 38505 3955");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->uidvalidity, 38505u);
  EXPECT_EQ(u->uids, std::vector<uint32_t>{3955});
  u = ParseAppendUid("APPENDUID 1 5:7,9,12:11");  // RFC 4315: a range may be written high:low
  ASSERT_TRUE(u);
  EXPECT_EQ(u->uids, (std::vector<uint32_t>{5, 6, 7, 9, 11, 12}));
  EXPECT_FALSE(ParseAppendUid("APPENDUID x 5"));
  EXPECT_FALSE(ParseAppendUid("COPYUID 1 2 3"));
  EXPECT_FALSE(ParseAppendUid("APPENDUID 1 1:4000000000")) << "no uid-set we sent is that large";
}

TEST(ImapProtocol, SearchAndList) {
  EXPECT_EQ(ParseSearch("* SEARCH 2 84 882"), (std::vector<uint32_t>{2, 84, 882}));
  EXPECT_TRUE(ParseSearch("* SEARCH").empty());
  EXPECT_EQ(ParseSearch("* SEARCH 4 (MODSEQ 917162500)"), std::vector<uint32_t>{4});
  auto l = ParseList(R"(* LIST (\HasNoChildren) "." "WeChat Archiver")");
  ASSERT_TRUE(l);
  EXPECT_EQ(l->delimiter, ".");
  EXPECT_EQ(l->name, "WeChat Archiver");
  EXPECT_EQ(l->flags, std::vector<std::string>{"\\HasNoChildren"});
  l = ParseList("* LIST (\\Noselect) NIL \"\"");
  ASSERT_TRUE(l);
  EXPECT_EQ(l->delimiter, "");
  l = ParseList("* LIST () \"/\" {7}\r\nA \"b\"\\c");
  ASSERT_TRUE(l);
  EXPECT_EQ(l->name, "A \"b\"\\c");
  l = ParseList(R"(* LIST () "/" "a\"q")");
  ASSERT_TRUE(l);
  EXPECT_EQ(l->name, "a\"q");
  l = ParseList("* LIST () \"/\" INBOX");
  ASSERT_TRUE(l);
  EXPECT_EQ(l->name, "INBOX");
  EXPECT_FALSE(ParseList("* LIST () \"/\" {99}\r\nshort"));
}

TEST(ImapProtocol, LiteralsQuotingDatesAndNames) {
  EXPECT_EQ(TrailingLiteral("* LIST () \"/\" {12}"), 12u);
  EXPECT_EQ(TrailingLiteral("x {5+}"), 5u);
  EXPECT_FALSE(TrailingLiteral("x {a}"));
  EXPECT_FALSE(TrailingLiteral("OK done"));
  EXPECT_EQ(*Quote("WeChat Archiver"), "\"WeChat Archiver\"");
  EXPECT_EQ(*Quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_FALSE(Quote("a\r\nb"));
  EXPECT_FALSE(Quote("微信"));
  EXPECT_EQ(InternalDate(1603875600123), "28-Oct-2020 09:00:00 +0000");
  EXPECT_EQ(InternalDate(1577836800000), "01-Jan-2020 00:00:00 +0000");
  EXPECT_EQ(InternalDate(-5), "01-Jan-1970 00:00:00 +0000");
  EXPECT_EQ(MailboxName({"Archive", "微信"}, "."), "Archive.&X65P4Q-");
  EXPECT_EQ(MailboxName({"WeChat Archiver"}, "/"), "WeChat Archiver");
}

TEST(ImapProtocol, SaslAndBase64) {
  // RFC 4616 section 4 example: authzid Ursel, authcid Kurt, password xipj3plmq.
  EXPECT_EQ(*Base64Decode(SaslPlain("Ursel", "Kurt", "xipj3plmq")), std::string("Ursel\0Kurt\0xipj3plmq", 20));
  EXPECT_EQ(SaslXoauth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"),
            // Google's documented example of the XOAUTH2 initial response.
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRH"
            "RXVZMjl0Q2cBAQ==");
  EXPECT_EQ(Base64(""), "");
  EXPECT_EQ(Base64("f"), "Zg==");
  EXPECT_EQ(*Base64Decode("Zm9vYg=="), "foob");
  EXPECT_FALSE(Base64Decode("abc"));
}

TEST(ImapProtocol, ThrottlingIsTemporary) {
  Response ex = ParseResponse("W7 BAD Request is throttled. Suggested Backoff Time: 299961 milliseconds");
  EXPECT_TRUE(IsTemporary(ex));
  EXPECT_EQ(SuggestedBackoff(ex.text), std::chrono::milliseconds(299961));
  EXPECT_TRUE(IsTemporary(ParseResponse("W8 NO [UNAVAILABLE] Temporary failure")));
  EXPECT_TRUE(IsTemporary(ParseResponse("W8 NO [THROTTLED] slow down")));
  EXPECT_FALSE(IsTemporary(ParseResponse("W9 NO [LIMIT] Message too large")));
  EXPECT_FALSE(IsTemporary(ParseResponse("W9 NO [OVERQUOTA] Quota exceeded")));
  EXPECT_FALSE(SuggestedBackoff("Suggested Backoff Time: soon"));
}

}  // namespace
}  // namespace wxa::sinks::imap
