// The direct serializer's building blocks (dates, quoted-printable, header
// words and folding, display names, file name parameters) and the
// renderer's rules (To never empty, no header injection, 20,000
// participants, buffer reuse), each checked by parsing the output back with
// GMime.
#include <gmime/gmime.h>
#include <gtest/gtest.h>

#include <ctime>
#include <limits>
#include <random>
#include <string>

#include <fmt/format.h>

#include "formats/core/text.h"
#include "formats/mime/gmime_reference.h"
#include "formats/mime/renderer.h"
#include "formats/mime/serializer.h"

namespace wxa::mime {
namespace {

using reference::Compare;
using reference::ParseWithGMime;

class MimeSerializer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { InitGMime(); }
};

// A small composed item, built by hand.
ComposedItem Minimal() {
  ComposedItem c;
  c.key_hex = std::string(32, 'a');
  c.subject = "WeChat: a -> b";
  c.from = {"a", "A", "a@corp.example.com"};
  c.to = {{"b", "B", "b@corp.example.com"}};
  c.date_s = 1603875600;
  c.message_id = "aaaa@wxarchiver";
  c.references = {"conv-1@wxarchiver"};
  c.fields = {{"X-WeChat-MsgId", "m1"}, {"X-Archive-Item", c.key_hex}};
  c.plain = "hello\n";
  c.html = "<p>hello</p>\n";
  return c;
}

// Serializes, parses back with GMime, and returns the differences plus
// wire-format problems (header lines over 78 columns included).
std::vector<std::string> RoundTrip(const ComposedItem& c, size_t max_header_line = 78, std::string* bytes = nullptr) {
  std::string out;
  SerializeMessage(c, &out);
  if (bytes != nullptr) *bytes = out;
  auto wire = reference::CheckWireFormat(out);
  std::vector<std::string> problems = wire.problems;
  if (wire.longest_header_line > max_header_line) {
    problems.push_back(fmt::format("a header line of {} characters", wire.longest_header_line));
  }
  auto parsed = ParseWithGMime(out);
  if (!parsed.ok()) {
    problems.push_back(parsed.status().ToString());
    return problems;
  }
  for (auto& d : Compare(c, *parsed)) problems.push_back(std::move(d));
  return problems;
}

std::string Join(const std::vector<std::string>& v) { return fmt::format("{}", fmt::join(v, "\n")); }

// Every encoded word in `header` is at most 75 characters (RFC 2047 section 2).
void ExpectEncodedWordsShort(const std::string& header) {
  for (size_t p = 0; (p = header.find("=?UTF-8?", p)) != std::string::npos;) {
    size_t e = header.find("?=", p + 10);  // after "=?UTF-8?B?"
    ASSERT_NE(e, std::string::npos) << header;
    EXPECT_LE(e + 2 - p, 75u) << header.substr(p, e + 2 - p);
    p = e + 2;
  }
}

std::string ReferenceDate(int64_t t) {
  time_t tt = static_cast<time_t>(t);
  struct tm tm {};
  gmtime_r(&tt, &tm);
  char buf[64];
  strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S +0000", &tm);
  return buf;
}

TEST_F(MimeSerializer, DatesFrom1970To9999) {
  std::vector<int64_t> times = {0, 1, 59, 86399, 86400, 951782400 /* 2000-02-29 */, 1603875600,
                                4107542400 /* 2100-03-01 */, 253402300799};
  // Each year's first and last second, and a leap day where there is one.
  for (int y = 1970; y <= 9999; ++y) {
    struct tm tm {};
    tm.tm_year = y - 1900;
    tm.tm_mday = 1;
    int64_t jan1 = timegm(&tm);
    times.push_back(jan1);
    if (y > 1970) times.push_back(jan1 - 1);
    tm.tm_mon = 1;
    tm.tm_mday = 29;
    int64_t feb29 = timegm(&tm);
    times.push_back(feb29 + 12345);
  }
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20000; ++i) times.push_back(static_cast<int64_t>(rng() % 253402300800ULL));
  for (int64_t t : times) {
    std::string d = FormatRfc5322Date(t);
    ASSERT_EQ(d, ReferenceDate(t)) << t;
    GDateTime* parsed = g_mime_utils_header_decode_date(d.c_str());
    ASSERT_NE(parsed, nullptr) << d;
    EXPECT_EQ(g_date_time_to_unix(parsed), t) << d;
    g_date_time_unref(parsed);
  }
  // Out of range values (the parser clamps msgtime; the composer clamps
  // again) still give a valid date.
  EXPECT_EQ(FormatRfc5322Date(-5), "Thu, 01 Jan 1970 00:00:00 +0000");
  EXPECT_EQ(FormatRfc5322Date(253402300800 * 2), "Fri, 31 Dec 9999 23:59:59 +0000");
}

TEST_F(MimeSerializer, DateHeaderForEveryMsgtimeEdge) {
  for (int64_t ms : {int64_t{0}, int64_t{999}, int64_t{1000}, int64_t{253402300799999}}) {
    core::Item it;
    it.msgid = "m";
    it.key = core::ItemKey::For("wecom", "c", "m");
    it.from = "a";
    it.to = {"b"};
    it.msgtime_ms = ms;
    RenderInput in{&it, {"a", "A", "a@x.com"}, {{"b", "B", "b@x.com"}}};
    ComposedItem c = Compose(in);
    EXPECT_EQ(c.date_s, ms / 1000);
    EXPECT_EQ(Join(RoundTrip(c)), "") << ms;
  }
}

TEST_F(MimeSerializer, SevenBitOnlyWhenSafe) {
  EXPECT_TRUE(Fits7bit("hello\nworld\n"));
  EXPECT_TRUE(Fits7bit("tab\there\n"));
  EXPECT_FALSE(Fits7bit("caf\xC3\xA9\n"));
  EXPECT_FALSE(Fits7bit("a\rb\n"));
  EXPECT_FALSE(Fits7bit(std::string(999, 'x')));
  EXPECT_TRUE(Fits7bit(std::string(998, 'x')));
  // A line a reader could take for a boundary goes quoted-printable.
  EXPECT_FALSE(Fits7bit("ok\n--=_wxa_x_alt\n"));
  EXPECT_FALSE(Fits7bit("--"));
  EXPECT_TRUE(Fits7bit("a--b\n-\n"));
}

TEST_F(MimeSerializer, QuotedPrintableKeepsEveryByte) {
  std::mt19937_64 rng(11);
  const std::vector<std::string> pieces = {"a", " ", "\t", "=", "\n", "张", "😀", "--", ".", "From ", "x=3D",
                                           std::string(100, 'y'), "  \n", "é", "?", "_"};
  for (int round = 0; round < 300; ++round) {
    std::string text;
    int n = static_cast<int>(rng() % 200);
    for (int i = 0; i < n; ++i) text += pieces[rng() % pieces.size()];
    std::string qp;
    AppendQuotedPrintable(text, &qp);
    size_t start = 0;
    for (size_t e; (e = qp.find("\r\n", start)) != std::string::npos; start = e + 2) {
      ASSERT_LE(e - start, 76u) << qp;
      std::string_view line(qp.data() + start, e - start);
      ASSERT_TRUE(line.empty() || (line.back() != ' ' && line.back() != '\t')) << qp;
    }
    ComposedItem c = Minimal();
    c.plain = text;
    c.html = text + "\n";
    ASSERT_EQ(Join(RoundTrip(c)), "") << text;
  }
}

TEST_F(MimeSerializer, HeaderWordsFoldAndDecode) {
  const std::vector<std::string> subjects = {
      "WeChat: 张三 -> 李四",
      "WeChat: Zhang San -> Li Si [file report.pdf]",
      std::string(200, 'x'),
      "a " + std::string(150, 'y') + " b",
      "=?utf-8?q?not_an_encoded_word?= plain",
      "ends with =? and ?= marks",
      "emoji 😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀 end",
      "中文中文中文中文中文中文中文中文中文中文中文中文中文中文中文中文中文中文中文中文中文中文中文中文中文中文",
      "mixed 中文 words and Ünïcödé and more words to make it long enough to fold twice over",
      "under_score and \"quotes\" and (parens) and back\\slash",
      "a  double  space",
  };
  for (const auto& s : subjects) {
    ComposedItem c = Minimal();
    c.subject = s;
    c.fields.push_back({"X-WeChat-To", s});
    std::string bytes;
    EXPECT_EQ(Join(RoundTrip(c, 78, &bytes)), "") << s;
    std::string head = bytes.substr(0, bytes.find("\r\n\r\n"));
    ExpectEncodedWordsShort(head);
  }
}

TEST_F(MimeSerializer, DisplayNamesRoundTrip) {
  const std::vector<std::string> names = {
      "Zhang San", "张三", "Wang, Wu", "O'Brien", "J. R. \"Bob\" Dobbs", "back\\slash", "a@b", "<angle>",
      "=?utf-8?b?5byg5LiJ?=", "(comment)", "semi;colon", "Ünïcödé Name", "😀", std::string(1000, 'n'),
      "x " + std::string(300, 'y') + " z", std::string(400, ',')};
  for (const auto& n : names) {
    ComposedItem c = Minimal();
    c.from.name = n;
    c.to = {{"b", n, "b@corp.example.com"}, {"c", "C", "c@corp.example.com"}};
    EXPECT_EQ(Join(RoundTrip(c)), "") << n;
  }
  // No name: the bare address.
  ComposedItem c = Minimal();
  c.from.name.clear();
  std::string bytes;
  EXPECT_EQ(Join(RoundTrip(c, 78, &bytes)), "");
  EXPECT_NE(bytes.find("\r\nFrom: a@corp.example.com\r\n"), std::string::npos) << bytes;
}

TEST_F(MimeSerializer, FileNamesInBothForms) {
  const std::vector<std::string> names = {
      // (Composed names never hold '?': SanitizeFileName replaces it, and
      // GMime would decode "=?...?=" in a file name whatever its form.)
      "report.pdf", "same (2).pdf", "资料 report.pdf", "emoji 😀.png", "=_not=a=word.txt",
      "quote_and_semicolon;name.txt", "Ünïcödé.docx", std::string(170, 'a') + ".pdf",
      core::TruncateUtf8(std::string(60, 'x') + "中文名字很长很长很长很长很长很长很长很长很长很长很长很长很长很长很长很长很长很长很长很长很长很长", 176) + ".pdf"};
  std::string data = "%PDF-1.4 bytes";
  for (const auto& n : names) {
    ComposedItem c = Minimal();
    c.attachments.push_back({n, "application/pdf", data.data(), data.size(), false});
    std::string bytes;
    // A long ASCII name is one quoted string: within 998 columns, not 78.
    EXPECT_EQ(Join(RoundTrip(c, n.size() > 60 && core::IsValidUtf8(n) ? 998 : 78, &bytes)), "") << n;
    bool ascii = true;
    for (unsigned char ch : n) ascii = ascii && ch < 0x80;
    if (!ascii) {
      EXPECT_NE(bytes.find("name*"), std::string::npos) << bytes;
      EXPECT_NE(bytes.find("name=\"=?UTF-8?"), std::string::npos) << bytes;
      EXPECT_NE(bytes.find("filename*"), std::string::npos) << bytes;
      EXPECT_NE(bytes.find("filename=\"=?UTF-8?"), std::string::npos) << bytes;
    }
  }
}

core::Item OneToOne() {
  core::Item it;
  it.msgid = "m1";
  it.key = core::ItemKey::For("wecom", "c", "m1");
  it.msgtype = "meeting_voice_call";
  it.action = "send";
  it.from = "zhangsan";
  it.to = {"zhangsan"};
  it.msgtime_ms = 1603875600000;
  it.kind = core::ItemKind::kCall;
  it.call = core::CallInfo{"voice meeting", 54, {}, {}};
  return it;
}

// Payload times are untrusted: an entry or call time of any int64 value is
// shown as out of range, never multiplied past int64 (fuzz_render_roundtrip
// found -16038603875611001 * 1000 under UBSan).
TEST_F(MimeSerializer, PayloadTimesOfAnyValue) {
  for (int64_t t : {std::numeric_limits<int64_t>::min(), int64_t{-16038603875611001}, int64_t{-62135596801},
                    int64_t{253402300800}, std::numeric_limits<int64_t>::max()}) {
    core::Item it = OneToOne();
    it.entries.push_back({"ChatRecordText", t, "hello"});
    it.call = core::CallInfo{"voice call (1:1)", std::nullopt, t, t};
    RenderInput in{&it, {"a", "A", "a@x.com"}, {{"b", "B", "b@x.com"}}};
    ComposedItem c = Compose(in);
    EXPECT_NE(c.plain.find(fmt::format("{} s since 1970 (out of range)", t)), std::string::npos) << c.plain;
    EXPECT_EQ(Join(RoundTrip(c)), "") << t;
  }
  core::Item it = OneToOne();
  it.entries.push_back({"ChatRecordText", int64_t{1603875610}, "hello"});
  RenderInput in{&it, {"a", "A", "a@x.com"}, {{"b", "B", "b@x.com"}}};
  EXPECT_NE(Compose(in).plain.find("2020-10-28 09:00:10 UTC [ChatRecordText] hello"), std::string::npos);
}

TEST_F(MimeSerializer, ToIsNeverEmpty) {
  core::Item it = OneToOne();
  Person z{"zhangsan", "张三", "zhangsan@corp.example.com"};
  // Only the sender takes part (the mapper leaves the sender out of To).
  RenderInput in{&it, z, {}};
  ComposedItem c = Compose(in);
  ASSERT_EQ(c.to.size(), 1u);
  EXPECT_EQ(c.to[0].address, "zhangsan@corp.example.com");
  EXPECT_EQ(Join(RoundTrip(c)), "");
  // Nobody named at all: the empty group.
  it.to.clear();
  c = Compose(in);
  EXPECT_TRUE(c.to.empty());
  std::string bytes;
  EXPECT_EQ(Join(RoundTrip(c, 78, &bytes)), "");
  EXPECT_NE(bytes.find("\r\nTo: undisclosed-recipients:;\r\n"), std::string::npos);
  // A group without resolved members: the room.
  it.roomid = "wr123";
  c = Compose(in);
  ASSERT_EQ(c.to.size(), 1u);
  EXPECT_EQ(c.to[0].address, "room-wr123@wecom.invalid");
  EXPECT_EQ(Join(RoundTrip(c)), "");
}

TEST_F(MimeSerializer, HeaderInjectionIsImpossible) {
  core::Item it = OneToOne();
  it.msgid = "m\r\nBcc: victim@evil.example";
  it.roomid = "wr\r\nBcc: victim@evil.example";
  it.from = "a\r\nX-Evil: 1";
  it.to = {"b\nX-Evil: 2", "c\rX-Evil: 3"};
  it.label = "x\r\n\r\n<html>";
  it.text = "body\r\n--=_wxa_" + it.key.Hex() + "_alt\r\nContent-Type: text/evil\r\n\r\nevil";
  RenderInput in{&it,
                 {it.from, "Name\r\nBcc: victim@evil.example", "z@x.com\r\nBcc: v@evil.example"},
                 {{"lisi", "L\nX-Evil: 4", "l@x.com>, <evil@evil.example"}}};
  Renderer r;
  auto bytes = r.Render(in);
  ASSERT_TRUE(bytes.ok());
  std::string head = bytes->substr(0, bytes->find("\r\n\r\n"));
  EXPECT_EQ(head.find("\r\nBcc:"), std::string::npos) << head;
  EXPECT_EQ(head.find("\r\nX-Evil:"), std::string::npos) << head;
  EXPECT_NE(head.find("X-WeChat-MsgId: m Bcc: victim@evil.example"), std::string::npos) << head;
  auto parsed = ParseWithGMime(*bytes);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(Join(Compare(r.composed(), *parsed)), "");
  // Addresses that are not plain addr-specs are replaced, never written.
  EXPECT_EQ(parsed->from[0].address, SyntheticAddress(it.from));
  EXPECT_EQ(parsed->to[0].address, "lisi@wecom.invalid");
  EXPECT_EQ(bytes->find("evil@evil.example"), std::string::npos);
  // The text's would-be boundary line is encoded, so the structure stands
  // (Compare checked it): no delimiter line comes from the text.
  EXPECT_EQ(bytes->find("\r\n--=_wxa_" + it.key.Hex() + "_alt\r\nContent-Type: text/evil"), std::string::npos);
}

TEST_F(MimeSerializer, TwentyThousandParticipants) {
  core::Item it;
  it.msgid = "big";
  it.key = core::ItemKey::For("wecom", "c", "big");
  it.msgtype = "text";
  it.action = "send";
  it.from = "u0";
  it.roomid = "wr-huge";
  it.msgtime_ms = 1603875600000;
  it.text = "hello everyone";
  RenderInput in{&it, {"u0", "用户0", "u0@corp.example.com"}, {}};
  constexpr int kPeople = 20000;
  for (int i = 1; i <= kPeople; ++i) {
    std::string id = fmt::format("u{}", i);
    it.to.push_back(id);
    in.to.push_back({id, i % 3 == 0 ? fmt::format("用户{}", i) : fmt::format("User {}", i),
                     fmt::format("{}@corp.example.com", id)});
  }
  Renderer r;
  auto bytes = r.Render(in);
  ASSERT_TRUE(bytes.ok());
  auto wire = reference::CheckWireFormat(*bytes);
  EXPECT_EQ(Join(wire.problems), "");
  EXPECT_LE(wire.longest_header_line, 78u);
  auto parsed = ParseWithGMime(*bytes);
  ASSERT_TRUE(parsed.ok());
  ASSERT_EQ(parsed->to.size(), static_cast<size_t>(kPeople));
  EXPECT_EQ(parsed->to.back().address, fmt::format("u{}@corp.example.com", kPeople));
  EXPECT_EQ(parsed->to[2].name, "用户3");
  EXPECT_EQ(Join(Compare(r.composed(), *parsed)), "");
  // The subject names three, the body twenty, X-WeChat-To everyone.
  EXPECT_EQ(r.composed().subject, "WeChat group wr-huge: 用户0");
  const HeaderField* to_ids = nullptr;
  for (const auto& f : r.composed().fields) {
    if (f.name == "X-WeChat-To") to_ids = &f;
  }
  ASSERT_NE(to_ids, nullptr);
  EXPECT_EQ(std::count(to_ids->value.begin(), to_ids->value.end(), ','), kPeople - 1);
}

TEST_F(MimeSerializer, RenderAppendReusesTheCallersBuffer) {
  core::Item it = OneToOne();
  RenderInput in{&it, {"zhangsan", "张三", "z@x.com"}, {{"lisi", "李四", "l@x.com"}}};
  Renderer r;
  auto one = r.Render(in);
  ASSERT_TRUE(one.ok());
  std::string buf;
  ASSERT_TRUE(r.RenderAppend(in, &buf).ok());
  ASSERT_TRUE(r.RenderAppend(in, &buf).ok());
  EXPECT_EQ(buf, *one + *one);
  buf.clear();
  const char* storage = buf.data();
  ASSERT_TRUE(r.RenderAppend(in, &buf).ok());
  EXPECT_EQ(buf.data(), storage) << "a buffer with room is not reallocated";
  EXPECT_EQ(buf, *one);
  auto size = r.MeasureSize(in);
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, one->size());
  EXPECT_FALSE(r.Render(RenderInput{}).ok());
}

}  // namespace
}  // namespace wxa::mime
