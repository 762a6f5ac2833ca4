#include <gtest/gtest.h>

#include <limits>

#include "formats/core/csv.h"
#include "formats/core/file.h"
#include "formats/core/hash.h"
#include "formats/core/item.h"
#include "formats/core/json_writer.h"
#include "formats/core/text.h"
#include "tests/test_util.h"

namespace wxa::core {
namespace {

TEST(Csv, ToleratesWhatSpreadsheetsWrite) {
  auto t = ParseCsv(
      "\xEF\xBB\xBF Mobile , Mailbox \r\n"
      "\"+86 138-0013-8000\" , a@x.com\r\n"
      "\r\n"
      "  13900139000,\"quoted \"\"name\"\"\"\r\n"
      "\"multi\nline\",b@x.com\n"
      "last,row",
      "test.csv");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->header, (std::vector<std::string>{"mobile", "mailbox"}));
  ASSERT_EQ(t->rows.size(), 4u);
  EXPECT_EQ(t->rows[0].fields, (std::vector<std::string>{"+86 138-0013-8000", "a@x.com"}));
  EXPECT_EQ(t->rows[0].line, 2u);
  EXPECT_EQ(t->rows[1].fields[1], "quoted \"name\"");
  EXPECT_EQ(t->rows[1].line, 4u);
  EXPECT_EQ(t->rows[2].fields[0], "multi\nline");
  EXPECT_EQ(t->rows[3].line, 7u);
  EXPECT_EQ(t->Column({"mailbox"}), 1);
  EXPECT_EQ(t->Column({"nope", "mobile"}), 0);
}

TEST(Csv, SemicolonSeparatorAndErrors) {
  auto t = ParseCsv("a;b\n1;2\n", "x");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->rows[0].fields, (std::vector<std::string>{"1", "2"}));
  auto bad = ParseCsv("a,b\n\"never closed,2\n", "bad.csv");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("bad.csv:2"), std::string::npos);
  EXPECT_FALSE(ParseCsv("\n\n", "empty").ok());
}

TEST(Text, Utf8ValidationAndRepair) {
  EXPECT_TRUE(IsValidUtf8("plain"));
  EXPECT_TRUE(IsValidUtf8("你好 😀"));
  EXPECT_FALSE(IsValidUtf8("\xFF"));
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xE4\xBD"));          // truncated
  std::string out;
  EXPECT_EQ(RepairUtf8("a\xFF\xFE" "b你", &out), 2u);
  EXPECT_EQ(out, "a\xEF\xBF\xBD\xEF\xBF\xBD" "b你");
  EXPECT_TRUE(IsValidUtf8(out));
}

TEST(Text, ControlsAndLines) {
  EXPECT_EQ(StripControls("a\x01" "b\r\nc\rd\te\x7F", true), "ab\nc\nd\te");
  EXPECT_EQ(StripControls("a\nb", false), "ab");
  EXPECT_EQ(OneLine("  wr1\r\nBcc: x@y  "), "wr1 Bcc: x@y");
  EXPECT_EQ(OneLine("a\x01\x02" "b"), "a b");
  EXPECT_EQ(TruncateUtf8("你好世界", 9), "你好\xE2\x80\xA6");  // 2 chars + ellipsis
  EXPECT_EQ(TruncateUtf8("short", 10), "short");
}

TEST(Text, SanitizeFileName) {
  std::string p = SanitizeFileName("../../etc/passwd", "x");
  EXPECT_EQ(p.find('/'), std::string::npos);
  EXPECT_NE(p[0], '.');
  EXPECT_EQ(SanitizeFileName("invoice\r\nBcc: a.pdf", "x"), "invoiceBcc_ a.pdf");
  EXPECT_EQ(SanitizeFileName("..", "fallback.bin"), "fallback.bin");
  EXPECT_EQ(SanitizeFileName("", "fallback.bin"), "fallback.bin");
  EXPECT_EQ(SanitizeFileName("C:\\dir\\报告.docx", "x"), "C__dir_报告.docx");
  std::string longname(400, 'a');
  std::string s = SanitizeFileName(longname + ".pdf", "x");
  EXPECT_LE(s.size(), 180u);
  EXPECT_EQ(s.substr(s.size() - 4), ".pdf");
  EXPECT_TRUE(IsValidUtf8(SanitizeFileName("bad\xFF.txt", "x")));
}

TEST(Text, Formats) {
  EXPECT_EQ(FormatUtcMillis(1547087894783), "2019-01-10 02:38:14 UTC");
  EXPECT_EQ(FormatUtcMillis(0), "1970-01-01 00:00:00 UTC");
  EXPECT_EQ(FormatUtcMillis(-1), "1969-12-31 23:59:59 UTC");
  EXPECT_EQ(FormatUtcMillis(253402300799999), "9999-12-31 23:59:59 UTC");
  EXPECT_EQ(FormatUtcMillis(253402300800000), "253402300800000 ms since 1970 (out of range)");
  EXPECT_EQ(FormatUtcMillis(std::numeric_limits<int64_t>::min()),
            "-9223372036854775808 ms since 1970 (out of range)");
  EXPECT_EQ(FormatUtcSeconds(-62135596800), "0001-01-01 00:00:00 UTC");
  EXPECT_EQ(FormatUtcSeconds(1547087894), "2019-01-10 02:38:14 UTC");
  EXPECT_EQ(FormatUtcSeconds(std::numeric_limits<int64_t>::max()),
            "9223372036854775807 s since 1970 (out of range)");
  EXPECT_EQ(FormatDuration(10), "0:10");
  EXPECT_EQ(FormatDuration(3725), "1:02:05");
  EXPECT_TRUE(AllDigits("0123"));
  EXPECT_FALSE(AllDigits(""));
  EXPECT_FALSE(AllDigits("12a"));
}

TEST(JsonWriter, EscapesEverything) {
  std::string out;
  JsonWriter j(&out);
  j.BeginObject().Field("q", "a\"b\\c\n\x01").Field("bad", "x\xFFy").Key("arr").BeginArray();
  j.Int(-3).Uint(18446744073709551615ull).Bool(true).Null().Double(1.5);
  j.EndArray().EndObject();
  EXPECT_EQ(out,
            "{\"q\":\"a\\\"b\\\\c\\n\\u0001\",\"bad\":\"x\xEF\xBF\xBDy\","
            "\"arr\":[-3,18446744073709551615,true,null,1.5]}");
}

TEST(ItemKey, StableAndSeparated) {
  ItemKey a = ItemKey::For("wecom", "corp", "msg1");
  EXPECT_EQ(a, ItemKey::For("wecom", "corp", "msg1"));
  EXPECT_NE(a, ItemKey::For("wecom", "corp2", "msg1"));
  EXPECT_NE(ItemKey::For("wecom", "ab", "c"), ItemKey::For("wecom", "a", "bc"));
  EXPECT_EQ(a.Hex().size(), 32u);
  // SHA-256("wecom\0corp\0msg1") truncated to 16 bytes.
  std::string basis("wecom\0corp\0msg1", 15);
  EXPECT_EQ(a.Hex(), ToHex(Sha256(basis)).substr(0, 32));
}

TEST(Hash, KnownVectors) {
  EXPECT_EQ(ToHex(Md5("")), "d41d8cd98f00b204e9800998ecf8427e");
  EXPECT_EQ(ToHex(Sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  Sha256Stream s;
  s.Update("a");
  s.Update("bc");
  EXPECT_EQ(s.Finish(), Sha256("abc"));
}

TEST(Status, CarriesContext) {
  Status s = Status::FromErrno("write", "/x/y", ENOSPC);
  EXPECT_TRUE(s.IsIOError());
  EXPECT_EQ(s.os_errno(), ENOSPC);
  EXPECT_NE(s.ToString().find("No space left"), std::string::npos);
  Status c = s.WithContext("mailbox a@b.c");
  EXPECT_EQ(c.message().rfind("mailbox a@b.c: write /x/y", 0), 0u);
  Result<int> r = Status::NotFound("k");
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(r.status().IsNotFound());
  Result<int> v = 3;
  EXPECT_EQ(*v, 3);
}

TEST(File, AtomicWriteLeavesNoTempOnFailure) {
  test::TempDir dir;
  test::FaultEnv env;
  env.fail_sync = true;
  Status s = WriteFileAtomic(&env, dir / "t.tmp", dir / "final", "data", Durability::kFileAndDir);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(test::ListFiles(dir.path()).empty());
  env.fail_sync = false;
  // A stale temp from a crashed run is replaced.
  test::WriteFile(dir / "t.tmp", "stale");
  ASSERT_TRUE(WriteFileAtomic(&env, dir / "t.tmp", dir / "final", "data", Durability::kFileAndDir).ok());
  EXPECT_EQ(test::ReadFile(dir / "final"), "data");
  EXPECT_EQ(test::ListFiles(dir.path()), std::vector<std::string>{"final"});
}

TEST(File, MappedFileAndReadWholeFile) {
  test::TempDir dir;
  test::WriteFile(dir / "a", "hello");
  test::WriteFile(dir / "empty", "");
  auto m = MappedFile::Open(dir / "a");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->data(), "hello");
  auto e = MappedFile::Open(dir / "empty");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->size(), 0u);
  EXPECT_FALSE(MappedFile::Open(dir / "missing").ok());
  EXPECT_FALSE(ReadWholeFile(dir.path()).ok());  // a directory
  EXPECT_EQ(JoinPath("a/", "/b"), "a/b");
}

}  // namespace
}  // namespace wxa::core
