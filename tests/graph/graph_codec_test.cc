// Unit tests of the fake Graph server's parsers (no network).
#include "tests/graph/graph_codec.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace wxa::test::graph_codec {
namespace {

TEST(FakeGraphCodec, Base64RoundTripsAndRejectsJunk) {
  for (const std::string& s : std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\0\xff\x10", 3)}) {
    EXPECT_EQ(Base64Decode(Base64Encode(s)).value(), s);
    EXPECT_EQ(Base64UrlDecode(Base64UrlEncode(s, false)).value(), s);
  }
  EXPECT_EQ(Base64Decode("aGVs\r\nbG8=").value(), "hello");  // line breaks are skipped
  EXPECT_FALSE(Base64Decode("aGVsbG8*").has_value());
  EXPECT_FALSE(Base64Decode("aGVsbG8=x").has_value());  // data after padding
  EXPECT_FALSE(Base64Decode("a").has_value());          // dangling 6 bits
  EXPECT_EQ(Base64UrlEncode("\xfb\xff", true), "-_8=");
}

TEST(FakeGraphCodec, QueryDecodingTreatsPlusAsSpace) {
  auto q = ParseQuery("%24filter=internetMessageId%20eq%20'%3Ca%2Bb%40x%3E'&$top=5&x=a+b").value();
  EXPECT_EQ(q["$filter"], "internetMessageId eq '<a+b@x>'");
  EXPECT_EQ(q["$top"], "5");
  EXPECT_EQ(q["x"], "a b");
  EXPECT_FALSE(ParseQuery("a=%zz").has_value());
  EXPECT_EQ(PercentEncode("a b'<>"), "a%20b%27%3C%3E");
}

TEST(FakeGraphCodec, EqFilterHandlesDoubledQuotes) {
  auto f = ParseEqFilter("internetMessageId eq '<it''s@x>'").value();
  EXPECT_EQ(f.property, "internetMessageId");
  EXPECT_EQ(f.value, "<it's@x>");
  EXPECT_EQ(ParseEqFilter("  displayName   eq   'A B'  ")->value, "A B");
  EXPECT_FALSE(ParseEqFilter("displayName eq 'x").has_value());
  EXPECT_FALSE(ParseEqFilter("displayName eq 'x' or subject eq 'y'").has_value());
  EXPECT_FALSE(ParseEqFilter("displayName ne 'x'").has_value());
}

TEST(FakeGraphCodec, ExtendedPropertyFilter) {
  auto f = ParseExtendedPropertyFilter(
               "singleValueExtendedProperties/Any(ep: ep/id eq 'String {00020386-0000-0000-C000-000000000046} Name "
               "X-Key' and ep/value eq 'k''1')")
               .value();
  EXPECT_EQ(f.id, "String {00020386-0000-0000-C000-000000000046} Name X-Key");
  EXPECT_EQ(f.value, "k'1");
  EXPECT_FALSE(ParseExtendedPropertyFilter("singleValueExtendedProperties/Any(ep: ep/id eq 'a')").has_value());
  EXPECT_EQ(ExpandedExtendedPropertyFilter("singleValueExtendedProperties($filter=id eq 'String 0x007D')").value(),
            "id eq 'String 0x007D'");
  EXPECT_EQ(ExpandedExtendedPropertyFilter("singleValueExtendedProperties").value(), "");
  EXPECT_FALSE(ExpandedExtendedPropertyFilter("attachments").has_value());
}

TEST(FakeGraphCodec, MimeHeadersUnfoldAndStopAtBody) {
  std::string mime =
      "Subject: a\r\n b\r\nMessage-ID:\r\n\t<id@x>\r\nX-Empty:\r\n\r\nbody\r\nNot-A-Header: y\r\n";
  size_t body = 0;
  auto h = ParseMimeHeaders(mime, &body);
  ASSERT_EQ(h.size(), 3u);
  EXPECT_EQ(h[0].value, "a b");
  EXPECT_EQ(FindHeader(h, "message-id")->value, "<id@x>");
  EXPECT_EQ(FindHeader(h, "x-empty")->value, "");
  EXPECT_EQ(mime.substr(body), "body\r\nNot-A-Header: y\r\n");
  // LF-only line ends work too.
  auto lf = ParseMimeHeaders("A: 1\nB: 2\n\nx", &body);
  EXPECT_EQ(lf.size(), 2u);
  EXPECT_EQ(body, 11u);
}

TEST(FakeGraphCodec, EncodedWords) {
  EXPECT_EQ(DecodeEncodedWords("=?UTF-8?B?5L2g5aW9?= world"), "你好 world");
  EXPECT_EQ(DecodeEncodedWords("=?utf-8?q?a_b=3Dc?= =?utf-8?q?d?="), "a b=cd");  // space between words dropped
  EXPECT_EQ(DecodeEncodedWords("=?gb2312?B?xOO6ww==?="), "=?gb2312?B?xOO6ww==?=");  // other charsets kept
  EXPECT_EQ(DecodeEncodedWords("plain"), "plain");
}

TEST(FakeGraphCodec, Rfc5322Dates) {
  EXPECT_EQ(FormatIso8601(ParseRfc5322Date("Tue, 1 Jul 2003 10:52:37 +0200").value()), "2003-07-01T08:52:37Z");
  EXPECT_EQ(FormatIso8601(ParseRfc5322Date("1 Jul 2003 10:52 GMT").value()), "2003-07-01T10:52:00Z");
  EXPECT_EQ(FormatIso8601(ParseRfc5322Date("Thu, 13 Feb 69 23:32:54 -0330 (Newfoundland)").value()),
            "1969-02-14T03:02:54Z");
  EXPECT_EQ(FormatIso8601(ParseRfc5322Date("Mon, 2 Jan 2024 03:04:05 EST").value()), "2024-01-02T08:04:05Z");
  EXPECT_FALSE(ParseRfc5322Date("yesterday").has_value());
  EXPECT_FALSE(ParseRfc5322Date("Mon, 2 Foo 2024 03:04:05 +0000").has_value());
}

TEST(FakeGraphCodec, Iso8601) {
  EXPECT_EQ(FormatIso8601(ParseIso8601("2024-01-02T03:04:05Z").value()), "2024-01-02T03:04:05Z");
  EXPECT_EQ(FormatIso8601(ParseIso8601("2024-01-02T03:04:05.1234567+08:00").value()), "2024-01-01T19:04:05Z");
  EXPECT_EQ(FormatIso8601(ParseIso8601("2024-01-02T03:04:05").value()), "2024-01-02T03:04:05Z");
  EXPECT_FALSE(ParseIso8601("2024-01-02").has_value());
  EXPECT_FALSE(ParseIso8601("2024-13-02T03:04:05Z").has_value());
}

TEST(FakeGraphCodec, Mailboxes) {
  auto list = ParseMailboxList("\"Doe, John\" <john@x.test>, jane@y.test, =?UTF-8?B?5L2g?= <ni@z.test>");
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].name, "Doe, John");
  EXPECT_EQ(list[0].address, "john@x.test");
  EXPECT_EQ(list[1].address, "jane@y.test");
  EXPECT_EQ(list[2].name, "你");
  EXPECT_EQ(ParseMailbox("<a@b>").address, "a@b");
}

TEST(FakeGraphCodec, JwtRejectsMalformedAndUnknownAlgorithms) {
  JwtClaims claims;
  EXPECT_EQ(VerifyJwt("abc", "", &claims), JwtError::kMalformed);
  EXPECT_EQ(VerifyJwt("e30.e30.", "", &claims), JwtError::kMalformed);  // no alg
  // {"alg":"HS256"}.{} with any key: the algorithm is refused first.
  std::string hs = Base64UrlEncode("{\"alg\":\"HS256\"}", false) + "." + Base64UrlEncode("{}", false) + ".c2ln";
  EXPECT_EQ(VerifyJwt(hs, "", &claims), JwtError::kAlgorithm);
  std::string rs = Base64UrlEncode("{\"alg\":\"RS256\"}", false) + "." +
                   Base64UrlEncode("{\"aud\":[\"a\",\"b\"],\"exp\":5}", false) + ".c2ln";
  EXPECT_EQ(VerifyJwt(rs, "not a pem", &claims), JwtError::kKey);
  EXPECT_EQ(claims.aud.size(), 2u);
  EXPECT_EQ(claims.exp.value(), 5);
}

}  // namespace
}  // namespace wxa::test::graph_codec
