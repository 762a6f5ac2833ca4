#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <set>

#include <fmt/format.h>

#include "formats/core/hash.h"
#include "formats/wecom/directory.h"
#include "formats/wecom/media_store.h"
#include "formats/wecom/parser.h"
#include "formats/wecom/record_reader.h"
#include "tests/test_util.h"

namespace wxa::wecom {
namespace {

std::vector<RawRecord> ReadAll(RecordReader& r) {
  std::vector<RawRecord> all;
  while (true) {
    auto more = r.NextBatch(3, 1 << 20, &all);
    EXPECT_TRUE(more.ok());
    if (!more.ok() || !*more) break;
  }
  return all;
}

TEST(RecordReader, OffsetsLinesAndResume) {
  test::TempDir dir;
  const std::string a = "{\"a\":1}\r\n\n   \n{\"b\":2}\n";
  test::WriteFile(dir / "b.jsonl", "{\"c\":3}\n{\"d\":");  // truncated last line
  test::WriteFile(dir / "a.jsonl", a);
  test::WriteFile(dir / "ignored.txt", "{\"x\":1}\n");
  auto r = RecordReader::Open(dir.path());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->files(), (std::vector<std::string>{"a.jsonl", "b.jsonl"}));
  auto all = ReadAll(*r);
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[0].bytes, "{\"a\":1}");  // CR removed
  EXPECT_EQ(all[0].offset, 0u);
  EXPECT_EQ(all[0].line, 1u);
  EXPECT_EQ(all[0].next_offset, 9u);
  EXPECT_EQ(all[1].bytes, "{\"b\":2}");
  EXPECT_EQ(all[1].offset, a.find("{\"b\""));
  EXPECT_EQ(all[1].line, 4u);  // blank lines count
  EXPECT_EQ(all[1].next_offset, a.size());
  EXPECT_FALSE(all[1].unterminated);
  EXPECT_EQ(all[2].file_index, 1u);
  EXPECT_EQ(all[3].bytes, "{\"d\":");
  EXPECT_TRUE(all[3].unterminated);
  EXPECT_GE(all[3].bytes.capacity(), all[3].bytes.size() + kRecordPadding);

  // Resume from a cursor: the second record of a.jsonl, and skip b.jsonl.
  auto r2 = RecordReader::Open(dir.path());
  ASSERT_TRUE(r2.ok());
  r2->SetStart(0, {all[1].offset, 3});
  r2->SkipFile(1);
  auto rest = ReadAll(*r2);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].bytes, "{\"b\":2}");
  EXPECT_EQ(rest[0].line, 4u);
}

TEST(RecordReader, EmptyAndMissingSource) {
  test::TempDir dir;
  auto r = RecordReader::Open(dir.path());
  ASSERT_TRUE(r.ok());
  std::vector<RawRecord> out;
  auto more = r->NextBatch(10, 1 << 20, &out);
  ASSERT_TRUE(more.ok());
  EXPECT_FALSE(*more);
  EXPECT_FALSE(RecordReader::Open(dir / "missing").ok());
}

// The declared media sizes that cut batches: top-level and nested keys, the
// escaped ones of a mixed message's parts, numbers as strings; anything else
// counts nothing, and a number too big for any file counts as the cap.
TEST(RecordReader, DeclaredMediaBytes) {
  EXPECT_EQ(DeclaredMediaBytes(R"({"msgtype":"file","file":{"filesize":1234,"sdkfileid":"x"}})"), 1234u);
  EXPECT_EQ(DeclaredMediaBytes(R"({"voice":{"voice_size" : 10},"emotion":{"imagesize":"20"}})"), 30u);
  EXPECT_EQ(DeclaredMediaBytes(
                R"({"mixed":{"item":[{"type":"image","content":"{\"md5sum\":\"ab\",\"filesize\":300}"},)"
                R"({"type":"file","content":"{\"filesize\":\"400\"}"}]}})"),
            700u);
  // A mixed message inside a chat record: escaped twice.
  EXPECT_EQ(DeclaredMediaBytes(
                R"({"chatrecord":{"item":[{"type":"ChatRecordMixed","content":"{\"item\":[{\"type\":\"image\",)"
                R"(\"content\":\"{\\\"md5sum\\\":\\\"ab\\\",\\\"filesize\\\":13177}\"}]}"}]}})"),
            13177u);
  // Over the per-value bound (media over the item limit, never read): not counted.
  EXPECT_EQ(DeclaredMediaBytes(R"({"a":{"filesize":1000},"b":{"filesize":1001}})", 1000), 1000u);
  EXPECT_EQ(DeclaredMediaBytes(R"({"text":{"content":"filesize: 99"},"size":5,"xfilesize":7,"filesize_x":8})"), 0u);
  EXPECT_EQ(DeclaredMediaBytes(R"({"file":{"filesize":-5}})"), 0u);
  EXPECT_EQ(DeclaredMediaBytes(R"({"file":{"filesize":null}})"), 0u);
  EXPECT_EQ(DeclaredMediaBytes(R"({"file":{"filesize":)"), 0u);  // cut short
  EXPECT_EQ(DeclaredMediaBytes(""), 0u);
  const uint64_t cap = uint64_t{kMaxRecordBytes} * 64;
  EXPECT_EQ(DeclaredMediaBytes(R"({"file":{"filesize":99999999999999999999999999999999999999}})"), cap);
  EXPECT_EQ(DeclaredMediaBytes(R"({"a":{"filesize":18446744073709551617},"b":{"filesize":1}})"), cap + 1);
}

// A batch ends after the record whose declared media reach the budget (once
// it holds the minimum of records), so media-heavy batches are small:
// batches are what threads share. Every record is handed out once, in order.
TEST(RecordReader, BatchesEndAtTheirMediaBudget) {
  test::TempDir dir;
  std::string lines;
  for (int i = 0; i < 6; ++i) lines += fmt::format(R"({{"n":{},"file":{{"filesize":1000}}}})""\n", i);
  lines += R"({"n":6,"text":{"content":"no media"}})""\n";
  test::WriteFile(dir / "a.jsonl", lines);
  auto batches = [&](uint64_t budget, size_t min_records, uint64_t max_each) {
    auto r = RecordReader::Open(dir.path());
    EXPECT_TRUE(r.ok());
    BatchLimits limits;
    limits.records = 100;
    limits.media_bytes = budget;
    limits.media_min_records = min_records;
    limits.media_max_each = max_each;
    std::vector<size_t> sizes;
    std::vector<uint64_t> lines;
    while (r.ok()) {
      std::vector<RawRecord> out;
      auto more = r->NextBatch(limits, &out);
      EXPECT_TRUE(more.ok());
      if (!more.ok() || !*more) break;
      sizes.push_back(out.size());
      for (const auto& rec : out) lines.push_back(rec.line);
    }
    EXPECT_EQ(lines, (std::vector<uint64_t>{1, 2, 3, 4, 5, 6, 7})) << "a record lost or read twice";
    return sizes;
  };
  EXPECT_EQ(batches(2500, 1, UINT64_MAX), (std::vector<size_t>{3, 3, 1}));
  EXPECT_EQ(batches(2500, 4, UINT64_MAX), (std::vector<size_t>{4, 3}));  // not before 4 records
  EXPECT_EQ(batches(2500, 1, 999), (std::vector<size_t>{7}));  // 1,000-byte media over the item limit
  EXPECT_EQ(batches(UINT64_MAX, 1, UINT64_MAX), (std::vector<size_t>{7}));  // no budget
  // A budget of 0 still hands out records (a batch that ended before its
  // first record would end the run).
  EXPECT_EQ(batches(0, 0, UINT64_MAX), (std::vector<size_t>{1, 1, 1, 1, 1, 1, 1}));
}

// Issue #8 items 2 and 6: what is not a regular file inside the source is
// left out with a reason, never read, never blocks; the others are read.
void CheckHostileEntries(bool openat2);
TEST(RecordReader, HostileEntriesAreReportedAndTheRestIsRead) { CheckHostileEntries(true); }
TEST(RecordReader, HostileEntriesWithoutOpenat2) {
  core::UseOpenat2ForTesting(false);
  CheckHostileEntries(false);
  core::UseOpenat2ForTesting(true);
}
void CheckHostileEntries(bool openat2) {
  test::TempDir outside;
  test::WriteFile(outside / "x.jsonl", "{\"outside\":1}\n");
  test::TempDir dir;
  test::WriteFile(dir / "good.jsonl", "{\"a\":1}\n");
  ASSERT_EQ(::mkfifo((dir / "fifo.jsonl").c_str(), 0600), 0);
  ASSERT_EQ(::symlink("/dev/zero", (dir / "zero.jsonl").c_str()), 0);
  ASSERT_EQ(::symlink((outside / "x.jsonl").c_str(), (dir / "out.jsonl").c_str()), 0);
  ASSERT_EQ(::symlink((dir / "nowhere").c_str(), (dir / "dangling.jsonl").c_str()), 0);
  ASSERT_EQ(::mkdir((dir / "x.jsonl").c_str(), 0700), 0);
  ASSERT_EQ(::symlink("good.jsonl", (dir / "alias.jsonl").c_str()), 0);  // inside: fine
  auto r = RecordReader::Open(dir.path());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::map<std::string, std::string> why;
  for (const auto& i : r->issues()) why[i.file] = i.reason;
  const char* link = openat2 ? "outside" : "symlink";
  EXPECT_NE(why["fifo.jsonl"].find("FIFO"), std::string::npos) << why["fifo.jsonl"];
  EXPECT_NE(why["zero.jsonl"].find(link), std::string::npos) << why["zero.jsonl"];
  EXPECT_NE(why["out.jsonl"].find(link), std::string::npos) << why["out.jsonl"];
  EXPECT_NE(why["x.jsonl"].find("directory"), std::string::npos) << why["x.jsonl"];
  if (openat2) {
    EXPECT_EQ(r->files(), (std::vector<std::string>{"alias.jsonl", "good.jsonl"}));
    ASSERT_EQ(why.size(), 5u);
    EXPECT_NE(why["dangling.jsonl"].find("dangling"), std::string::npos) << why["dangling.jsonl"];
  } else {
    EXPECT_EQ(r->files(), (std::vector<std::string>{"good.jsonl"}));
    ASSERT_EQ(why.size(), 6u);  // no link followed, not even inside
  }
  auto all = ReadAll(*r);
  ASSERT_EQ(all.size(), openat2 ? 2u : 1u);
  EXPECT_EQ(all[0].bytes, "{\"a\":1}");
}

TEST(RecordReader, UnreadableFileIsReported) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads files whatever their mode";
  test::TempDir dir;
  test::WriteFile(dir / "a.jsonl", "{\"a\":1}\n");
  test::WriteFile(dir / "b.jsonl", "{\"b\":1}\n");
  ASSERT_EQ(::chmod((dir / "a.jsonl").c_str(), 0), 0);
  auto r = RecordReader::Open(dir.path());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->files(), (std::vector<std::string>{"b.jsonl"}));
  ASSERT_EQ(r->issues().size(), 1u);
  EXPECT_NE(r->issues()[0].reason.find("Permission denied"), std::string::npos);
}

// A file that becomes unreadable after Open() is skipped with an issue.
TEST(RecordReader, FileReplacedByAFifoAfterOpenIsSkipped) {
  test::TempDir dir;
  test::WriteFile(dir / "a.jsonl", "{\"a\":1}\n");
  test::WriteFile(dir / "b.jsonl", "{\"b\":1}\n");
  auto r = RecordReader::Open(dir.path());
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->files().size(), 2u);
  EXPECT_TRUE(r->TakeNewIssues().empty());
  ASSERT_EQ(::unlink((dir / "a.jsonl").c_str()), 0);
  ASSERT_EQ(::mkfifo((dir / "a.jsonl").c_str(), 0600), 0);
  auto all = ReadAll(*r);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].bytes, "{\"b\":1}");
  auto issues = r->TakeNewIssues();
  ASSERT_EQ(issues.size(), 1u);
  EXPECT_EQ(issues[0].file, "a.jsonl");
  EXPECT_TRUE(r->TakeNewIssues().empty());
}

// Issue #8 item 12: a UTF-8 BOM does not cost the first record.
TEST(RecordReader, ByteOrderMarkIsSkipped) {
  test::TempDir dir;
  test::WriteFile(dir / "a.jsonl", "\xEF\xBB\xBF{\"a\":1}\n{\"b\":2}\n");
  auto r = RecordReader::Open(dir.path());
  ASSERT_TRUE(r.ok());
  auto all = ReadAll(*r);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].bytes, "{\"a\":1}");
  EXPECT_EQ(all[0].offset, 3u);
  EXPECT_EQ(all[0].line, 1u);
  // Files concatenated with cat keep the BOM of the second one mid-file.
  RecordParser p({"c"});
  auto parsed = p.ParseLine("\xEF\xBB\xBF{\"msgid\":\"x\",\"msgtype\":\"text\",\"text\":{\"content\":\"hi\"}}");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->item.msgid, "x");
}

TEST(RecordReader, LinesLongerThanTheReadChunk) {
  test::TempDir dir;
  std::string big = "{\"text\":\"" + std::string(3 << 20, 'x') + "\"}";
  test::WriteFile(dir / "a.jsonl", big + "\n{\"n\":2}\n");
  auto r = RecordReader::Open(dir.path());
  ASSERT_TRUE(r.ok());
  auto all = ReadAll(*r);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].bytes, big);
  EXPECT_EQ(all[1].offset, big.size() + 1);
}

// A line well over kMaxRecordBytes (checked once per read chunk) is one
// too_long record (its first 4 KB kept) and reading goes on after its
// newline; at the end of the file without a newline it is unterminated,
// like any last line cut short, so the cursor stays before it and its tail
// is never read as a record of its own.
TEST(RecordReader, LinesOverTheLimit) {
  test::TempDir dir;
  const std::string huge = "{\"text\":\"" + std::string(kMaxRecordBytes + (4u << 20), 'x');
  test::WriteFile(dir / "a.jsonl", huge + "\"}\n{\"n\":2}\n" + huge);
  auto r = RecordReader::Open(dir.path());
  ASSERT_TRUE(r.ok());
  auto all = ReadAll(*r);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_TRUE(all[0].too_long);
  EXPECT_FALSE(all[0].unterminated);
  EXPECT_EQ(all[0].bytes.size(), 4096u);
  EXPECT_EQ(all[1].bytes, "{\"n\":2}");
  EXPECT_EQ(all[1].line, 2u);
  EXPECT_TRUE(all[2].too_long);
  EXPECT_TRUE(all[2].unterminated);
  EXPECT_EQ(all[2].offset, huge.size() + 3 + 8);
}

// The golden fixture holds one record per msgtype, in the official shapes.
std::map<std::string, Parsed> ParseFixture() {
  std::map<std::string, Parsed> by_id;
  auto r = RecordReader::Open(test::SourcePath("tests/data/golden"));
  EXPECT_TRUE(r.ok());
  RecordParser p({"corp1"});
  for (const auto& rec : ReadAll(*r)) {
    auto parsed = p.Parse(rec, "records.jsonl");
    EXPECT_TRUE(parsed.ok()) << rec.line << ": " << parsed.status().ToString();
    if (parsed.ok()) by_id[parsed->item.msgid] = std::move(*parsed);
  }
  return by_id;
}

TEST(Parser, EveryMsgTypeOfTheFixture) {
  auto all = ParseFixture();
  ASSERT_EQ(all.size(), 38u);
  std::set<std::string> types;
  for (const auto& [id, p] : all) {
    ASSERT_EQ(p.kind, Parsed::Kind::kItem);
    const core::Item& it = p.item;
    types.insert(it.msgtype);
    EXPECT_EQ(it.key, core::ItemKey::For("wecom", "corp1", id));
    EXPECT_FALSE(it.from.empty()) << id;
    EXPECT_GT(it.msgtime_ms, 1600000000000) << id;
    EXPECT_EQ(it.pos.file, "records.jsonl");
    // Known types need no raw attachment unless something was wrong.
    if (IsKnownMsgType(it.msgtype) && it.notes.empty()) {
      EXPECT_FALSE(it.attach_raw) << id;
    }
  }
  for (const char* t :
       {"text", "markdown", "link", "weapp", "card", "location", "emotion", "image", "voice",
        "video", "file", "qydiskfile", "chatrecord", "mixed", "news", "todo", "vote", "collect",
        "redpacket", "external_redpacket", "meeting", "calendar", "docmsg", "sphfeed", "agree",
        "disagree", "voiptext", "meeting_voice_call", "voip_doc_share", "meeting_notification",
        "revoke", "hongbao_v3"}) {
    EXPECT_EQ(types.count(t), 1u) << t;
  }

  const auto& text = all.at("CAQQluDa4QUY0On2rYSAgAMgzPrShAE=").item;
  EXPECT_EQ(text.text, "你好，明天上午十点开会。\nSee you then.");
  EXPECT_EQ(text.to, std::vector<std::string>{"lisi"});
  EXPECT_EQ(all.at("markdown-0001").item.text, "**加粗** 与 [链接](https://work.weixin.qq.com)");

  const auto& group = all.at("8891446340739254950_1603875826").item;
  EXPECT_TRUE(group.is_group());
  EXPECT_EQ(group.to.size(), 3u);

  const auto& file = all.at("18039699423706571225_1603875608").item;
  EXPECT_EQ(file.kind, core::ItemKind::kFile);
  ASSERT_EQ(file.media.size(), 1u);
  EXPECT_EQ(file.media[0].filename, "资料 report.pdf");
  EXPECT_EQ(file.media[0].extension, "pdf");
  EXPECT_EQ(file.media[0].declared_size, 2500u);

  const auto& voice = all.at("voice-0001").item;
  EXPECT_EQ(voice.kind, core::ItemKind::kMedia);
  EXPECT_EQ(voice.media[0].declared_size, 1600u);  // from voice_size
  EXPECT_EQ(voice.media[0].extension, "amr");
  EXPECT_EQ(all.at("emotion-0001").item.media[0].extension, "png");  // type 2

  const auto& call = all.at("17952229780246929345_1594197637").item;
  EXPECT_EQ(call.kind, core::ItemKind::kCall);
  ASSERT_TRUE(call.call && call.call->duration_s);
  EXPECT_EQ(*call.call->duration_s, 10);
  EXPECT_EQ(call.call->call_type, "voice call (1:1)");
  // voiptext keyed "info", numbers as strings.
  const auto& call2 = all.at("voiptext-info-0001").item;
  EXPECT_EQ(*call2.call->duration_s, 3725);
  EXPECT_EQ(call2.call->call_type, "group video call");

  const auto& mvc = all.at("17952229780246929345_1594197638").item;
  EXPECT_EQ(mvc.kind, core::ItemKind::kCall);
  ASSERT_EQ(mvc.media.size(), 1u);
  EXPECT_EQ(mvc.media[0].role, "recording");
  EXPECT_TRUE(mvc.media[0].md5sum.empty());
  EXPECT_EQ(*mvc.call->duration_s, 54);
  EXPECT_EQ(mvc.entries.size(), 2u);

  const auto& doc = all.at("16527954622422422847_1594199256").item;
  EXPECT_EQ(doc.media.at(0).filename, "欢迎使用微盘.pptx");

  const auto& rec = all.at("11354299838102555191_1603875658").item;
  ASSERT_EQ(rec.entries.size(), 2u);
  EXPECT_EQ(rec.entries[0].text, "test");
  EXPECT_EQ(rec.entries[0].time_s, 1603875610);
  EXPECT_EQ(rec.media.size(), 1u);  // the forwarded image

  const auto& mixed = all.at("DAQQluDa4QUY0On4kYSABAMgzPrShAE=").item;
  EXPECT_NE(mixed.text.find("你好[微笑]"), std::string::npos);
  EXPECT_EQ(mixed.media.size(), 1u);

  const auto& vote = all.at("vote-0001").item;
  EXPECT_NE(vote.text.find("去哪吃饭？"), std::string::npos);
  EXPECT_NE(vote.text.find("- C"), std::string::npos);

  const auto& red = all.at("external-redpacket-0001").item;
  bool has_amount = false;
  for (const auto& f : red.facts) has_amount |= (f.label == "Total amount" && f.value == "CNY 5.00");
  EXPECT_TRUE(has_amount);

  const auto& meeting = all.at("meeting-0001").item;
  bool has_id = false;
  for (const auto& f : meeting.facts) has_id |= (f.value == "11101571002822706744");
  EXPECT_TRUE(has_id) << "uint64 meeting id kept exactly";

  EXPECT_NE(all.at("docmsg-0001").item.text.find("测试&演示"), std::string::npos);

  const auto& recall = all.at("15775510700152506326_1603875615").item;
  EXPECT_EQ(recall.kind, core::ItemKind::kRecall);
  EXPECT_EQ(recall.recalled_msgid, "CAQQluDa4QUY0On2rYSAgAMgzPrShAE=");
  ASSERT_TRUE(recall.recalled_key.has_value());
  EXPECT_EQ(*recall.recalled_key, text.key);

  const auto& unknown = all.at("unknown-0001").item;
  EXPECT_EQ(unknown.kind, core::ItemKind::kUnknown);
  EXPECT_TRUE(unknown.attach_raw);
  EXPECT_FALSE(unknown.raw.empty());
  EXPECT_FALSE(unknown.facts.empty());

  const auto& ctl = all.at("ctl-0001").item;
  EXPECT_EQ(ctl.text, "bell\x07 and\x01 done");
  EXPECT_TRUE(ctl.attach_raw);
  EXPECT_FALSE(ctl.notes.empty());

  const auto& utf8 = all.at("utf8-0001").item;
  EXPECT_EQ(utf8.text, "bad \xEF\xBF\xBD\xEF\xBF\xBD bytes 中文");
  EXPECT_TRUE(utf8.attach_raw);
  EXPECT_NE(utf8.raw.find("\xFF\xFE"), std::string::npos) << "the original bytes are kept";
}

TEST(Parser, LenientAboutTypesAndUnits) {
  RecordParser p({});
  auto r = p.ParseLine(
      R"({"msgid":12345678901234567890123,"action":"send","from":"a","tolist":"b, c","roomid":"",)"
      R"("msgtime":"1603875600","msgtype":"file","file":{"md5sum":"18E93FC2EA884DF23B3D2D3B8667B9F0",)"
      R"("filename":"r.pdf","filesize":"1816","sdkfileid":"x"}})");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const auto& it = r->item;
  EXPECT_EQ(it.msgid, "12345678901234567890123");
  EXPECT_EQ(it.to, (std::vector<std::string>{"b", "c"}));
  EXPECT_EQ(it.msgtime_ms, 1603875600000);  // seconds detected
  EXPECT_EQ(it.media[0].declared_size, 1816u);
  EXPECT_EQ(it.media[0].md5sum, "18e93fc2ea884df23b3d2d3b8667b9f0");
  EXPECT_FALSE(it.notes.empty());
}

TEST(Parser, MalformedRecordsSayWhy) {
  RecordParser p({});
  struct Case {
    const char* line;
    const char* why;
  } cases[] = {
      {"not json at all", "not valid JSON"},
      {R"({"msgid":"x","action":"send","from":)", "not valid JSON"},
      {R"(["an","array"])", "not a JSON object"},
      {R"({"action":"send","from":"a","msgtype":"text","text":{"content":"x"}})", "no msgid"},
  };
  for (const auto& c : cases) {
    auto r = p.ParseLine(c.line);
    ASSERT_FALSE(r.ok()) << c.line;
    EXPECT_TRUE(r.status().IsCorruption());
    EXPECT_NE(r.status().message().find(c.why), std::string::npos) << r.status().message();
  }
  RawRecord truncated;
  truncated.bytes = R"({"msgid":"x","act)";
  truncated.unterminated = true;
  auto t = p.Parse(truncated, "f.jsonl");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("truncated"), std::string::npos);
}

TEST(Parser, SwitchAndMissingPayload) {
  RecordParser p({});
  auto sw = p.ParseLine(R"({"msgid":"125289002219525886280","action":"switch","time":1554119421840,"user":"XuJinSheng"})");
  ASSERT_TRUE(sw.ok());
  EXPECT_EQ(sw->kind, Parsed::Kind::kSwitch);
  EXPECT_EQ(sw->sw.user, "XuJinSheng");
  EXPECT_EQ(sw->sw.time_ms, 1554119421840);
  auto nopayload = p.ParseLine(R"({"msgid":"m","action":"send","from":"a","tolist":["b"],"msgtime":1603875600000,"msgtype":"image"})");
  ASSERT_TRUE(nopayload.ok());
  EXPECT_TRUE(nopayload->item.attach_raw);
  EXPECT_FALSE(nopayload->item.notes.empty());
  EXPECT_TRUE(nopayload->item.media.empty());
}

// Issue #8 item 11: out-of-range times are clamped, dated, and said so.
TEST(Parser, OutOfRangeTimesAreClampedAndNoted) {
  RecordParser p({"c"});
  auto rec = [](const std::string& t) {
    return R"({"msgid":"m","action":"send","from":"a","tolist":["b"],"msgtime":)" + t +
           R"(,"msgtype":"text","text":{"content":"x"}})";
  };
  struct Case {
    std::string msgtime;
    int64_t want_ms;
    const char* note;
  } cases[] = {
      {"9223372036854775807", 253402300799000, "after the year 9999"},
      {"-5", 0, "before 1970"},
      {"0", 0, "msgtime is 0"},
      {"99999999999999999999", 0, "not a usable time"},
      {"\"soon\"", 0, "not a usable time"},
      {"1603875600000", 1603875600000, nullptr},
      {"\"1603875600000\"", 1603875600000, nullptr},
  };
  for (const auto& c : cases) {
    auto r = p.ParseLine(rec(c.msgtime));
    ASSERT_TRUE(r.ok()) << c.msgtime << ": " << r.status().ToString();
    EXPECT_EQ(r->item.msgtime_ms, c.want_ms) << c.msgtime;
    if (c.note == nullptr) {
      EXPECT_TRUE(r->item.notes.empty()) << c.msgtime;
    } else {
      bool said = false;
      for (const auto& n : r->item.notes) said |= n.find(c.note) != std::string::npos;
      EXPECT_TRUE(said) << c.msgtime << ": " << (r->item.notes.empty() ? "" : r->item.notes[0]);
      EXPECT_TRUE(r->item.attach_raw) << "the original record is kept";
    }
  }
  auto missing = p.ParseLine(R"({"msgid":"m","from":"a","tolist":["b"],"msgtype":"text","text":{"content":"x"}})");
  ASSERT_TRUE(missing.ok());
  EXPECT_NE(missing->item.notes.at(0).find("no msgtime"), std::string::npos);
}

// Issue #8 item 12: an encrypted reply line says what to do about it.
TEST(Parser, EncryptedGetChatDataLinesSayDecryptFirst) {
  RecordParser p({"c"});
  for (const char* line :
       {R"({"seq":196,"msgid":"CAQQ2fbb4QUY0On2rYSAgAMgip/yzgs=","publickey_ver":3,"encrypt_random_key":"ftJ+uz3n","encrypt_chat_msg":"898WSfGM"})",
        R"({"errcode":0,"errmsg":"ok","chatdata":[{"seq":1,"msgid":"x","encrypt_chat_msg":"y"}]})"}) {
    auto r = p.ParseLine(line);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("decrypt it first"), std::string::npos) << r.status().ToString();
  }
}

// Issue #8 items 14 and 15: shapes seen in public sources parse, and fields
// the renderer does not use still reach the item.
TEST(Parser, RealWorldShapesAndNoInformationLoss) {
  RecordParser p({"c"});
  auto one = [&](const std::string& line) {
    auto r = p.ParseLine(line);
    EXPECT_TRUE(r.ok()) << line << ": " << r.status().ToString();
    return r.ok() ? r->item : core::Item{};
  };
  auto fact = [](const core::Item& it, const std::string& label) {
    for (const auto& f : it.facts) {
      if (f.label == label) return f.value;
    }
    return std::string("(none)");
  };
  const std::string env = R"("msgid":"m","action":"send","from":"a","tolist":["b"],"roomid":"","msgtime":1603875600000,)";
  auto weapp = one("{" + env + R"("msgtype":"weapp","weapp":{"title":"T","username":"gh_1","appid":"wx42","pagepath":"pages/a?x=1"}})");
  EXPECT_EQ(fact(weapp, "appid"), "wx42");
  EXPECT_EQ(fact(weapp, "pagepath"), "pages/a?x=1");
  EXPECT_EQ(fact(weapp, "Mini program id"), "gh_1");
  auto extra = one("{" + env + R"("publickey_ver":3,"msgtype":"text","text":{"content":"hi","mentions":["u1","u2"]}})");
  EXPECT_EQ(fact(extra, "publickey_ver"), "3");
  EXPECT_EQ(fact(extra, "mentions"), R"(["u1","u2"])");
  EXPECT_EQ(one("{" + env + R"("msgtype":"card","card":{"corpname":"X","Userid":"zhangsan"}})").text,
            "Contact card: zhangsan (X)");
  auto note = one("{" + env + R"("msgtype":"note","note":{"title":"Plan","content":"do it"}})");
  EXPECT_EQ(note.text, "do it");
  EXPECT_EQ(note.kind, core::ItemKind::kChat);
  EXPECT_FALSE(note.attach_raw);
  auto mvc = one("{" + env + R"("msgtype":"meetingvoicecall","voiceid":"v1","meetingvoicecall":{"endtime":1603875660,"sdkfileid":"abc"}})");
  EXPECT_EQ(mvc.kind, core::ItemKind::kCall);
  ASSERT_EQ(mvc.media.size(), 1u);
  auto vds = one("{" + env + R"("msgtype":"voipdocshare","voipid":"c1","voipdocshare":{"filename":"a.pdf","md5sum":"ABCDEF0123456789ABCDEF0123456789","filesize":3,"sdkfileid":"z"}})");
  ASSERT_EQ(vds.media.size(), 1u);
  EXPECT_EQ(vds.media[0].md5sum, "abcdef0123456789abcdef0123456789") << "upper-case md5sum read";
  auto vote_nested = one("{" + env + R"("msgtype":"vote","vote":{"votetitle":"Lunch?","voteitem":["yes","no"],"votetype":101}})");
  EXPECT_NE(vote_nested.text.find("Lunch?"), std::string::npos);
  auto vote_top = one("{" + env + R"("msgtype":"vote","votetitle":"Lunch?","voteitem":["yes"],"votetype":102})");
  EXPECT_NE(vote_top.text.find("Voted: Lunch?"), std::string::npos);
  auto red = one("{" + env + R"("msgtype":"redpacket","external_redpacket":{"type":1,"wish":"Happy","totalcnt":2,"totalamount":888}})");
  EXPECT_EQ(fact(red, "Total amount"), "CNY 8.88");
  auto doc = one("{" + env + R"("msgtype":"docmsg","doc":{"title":"D","link_url":"u","creator":"lisi"}})");
  EXPECT_EQ(fact(doc, "Creator"), "lisi");
  auto voice = one("{" + env + R"("msgtype":"voice","voice":{"sdkfileid":"s","size":1600,"play_length":3}})");
  EXPECT_EQ(voice.media.at(0).declared_size, 1600u);
  // mixed content as a JSON string, an object, or plain text.
  auto mixed = one("{" + env + R"("msgtype":"mixed","mixed":{"item":[{"type":"text","content":"{\"content\":\"one\"}"},{"type":"text","content":{"content":"two"}},{"type":"text","content":"three"}]}})");
  EXPECT_EQ(mixed.text, "one\ntwo\nthree");
  // chatrecord item kinds and msgtime in seconds or milliseconds.
  auto cr = one("{" + env + R"("msgtype":"chatrecord","chatrecord":{"title":"h","item":[)"
                R"({"type":"ChatRecordVoice","msgtime":1603875610,"content":"{\"sdkfileid\":\"v\",\"voice_size\":10}"},)"
                R"({"type":"ChatRecordCard","msgtime":1603875611000,"content":"{\"userid\":\"u9\",\"corpname\":\"C\"}"},)"
                R"({"type":"ChatRecordEmotion","content":"{\"type\":2,\"sdkfileid\":\"e\"}"},)"
                R"({"type":"ChatRecordWeapp","content":"{\"title\":\"W\"}"},)"
                R"({"type":"ChatRecordVoiptext","content":"{\"callduration\":65,\"invitetype\":2}"},)"
                R"({"type":"ChatRecordMeetingVoiceCall","content":"{\"sdkfileid\":\"r\"}"},)"
                R"({"type":"ChatRecordVoipDocShare","content":"{\"filename\":\"s.pptx\",\"sdkfileid\":\"d\"}"}]}})");
  ASSERT_EQ(cr.entries.size(), 7u);
  EXPECT_EQ(cr.entries[0].time_s, 1603875610);
  EXPECT_EQ(cr.entries[1].time_s, 1603875611);
  EXPECT_EQ(cr.entries[1].text, "[contact card: u9 (C)]");
  EXPECT_EQ(cr.entries[3].text, "[mini program: W]");
  EXPECT_EQ(cr.entries[4].text, "[call, duration 1:05]");
  EXPECT_EQ(cr.entries[5].text, "[voice meeting recording]");
  EXPECT_EQ(cr.entries[6].text, "[document shared in a call: s.pptx]");
  EXPECT_EQ(cr.media.size(), 4u);  // voice, emotion, recording, document
  // A scheduled meeting is an invitation, not a call that happened.
  auto meeting = one("{" + env + R"("msgtype":"meeting","meeting":{"topic":"Sync","starttime":1603877400,"endtime":1603881000,"meetingtype":101,"meetingid":11101571002822706744}})");
  EXPECT_NE(meeting.kind, core::ItemKind::kCall);
  EXPECT_FALSE(meeting.call.has_value());
  EXPECT_NE(meeting.text.find("When: 2020-10-28 09:30:00 UTC - 2020-10-28 10:30:00 UTC"), std::string::npos) << meeting.text;
  EXPECT_EQ(fact(meeting, "Meeting id"), "11101571002822706744");
}

class MediaStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    good_ = "%PDF-1.4 hello";
    good_md5_ = core::ToHex(core::Md5(good_));
    test::WriteFile(dir_ / ("media/" + good_md5_), good_);
    test::WriteFile(dir_ / "media/a-b_c", "recording");  // sdkfileid "a+b/c"
    test::WriteFile(dir_ / "media/sub/listed.bin", "listed");
    test::WriteFile(dir_ / "media/index.csv",
                    "sdkfileid,path\nLISTED,sub/listed.bin\nEVIL,../../etc/passwd\nABS,/etc/passwd\n"
                    "LINKDIR,linkdir/passwd\n");
  }
  // Resolve and read, as the pipeline does.
  core::MediaRef Resolve(core::MediaRef m, uint64_t max_bytes = 1 << 20) {
    auto store = MediaStore::Open(dir_.path());
    EXPECT_TRUE(store.ok()) << store.status().ToString();
    if (!store.ok()) return m;
    store->Resolve(m);
    EXPECT_TRUE(store->Load(m, max_bytes).ok());
    issues_ = store->issues();
    return m;
  }
  void CheckHostileMedia(bool openat2);
  test::TempDir dir_;
  std::string good_, good_md5_;
  std::vector<CsvIssue> issues_;
};

TEST_F(MediaStoreTest, ByMd5Verified) {
  core::MediaRef m;
  m.md5sum = good_md5_;
  m.declared_size = good_.size();
  auto r = Resolve(m);
  EXPECT_EQ(r.state, core::MediaState::kOk);
  EXPECT_EQ(r.size, good_.size());
  EXPECT_EQ(r.bytes, good_);
  EXPECT_EQ(r.path, "media/" + good_md5_);
  EXPECT_TRUE(r.problem.empty());
  EXPECT_EQ(issues_.size(), 2u);  // the two unsafe index.csv rows
}

TEST_F(MediaStoreTest, ResolveReadsNothingAndLoadRefusesWhatIsTooLarge) {
  auto store = MediaStore::Open(dir_.path());
  ASSERT_TRUE(store.ok());
  core::MediaRef m;
  m.md5sum = good_md5_;
  store->Resolve(m);
  EXPECT_EQ(m.state, core::MediaState::kFound);
  EXPECT_TRUE(m.bytes.empty());
  EXPECT_EQ(m.size, good_.size());
  Status s = store->Load(m, 4);
  EXPECT_EQ(s.code(), Status::Code::kTooLarge);
  EXPECT_EQ(m.state, core::MediaState::kFound);
  EXPECT_TRUE(m.bytes.empty());
}

TEST_F(MediaStoreTest, MissingAndCorrupt) {
  core::MediaRef missing;
  missing.md5sum = std::string(32, 'a');
  auto r = Resolve(missing);
  EXPECT_EQ(r.state, core::MediaState::kMissing);
  EXPECT_TRUE(r.bytes.empty());
  EXPECT_NE(r.problem.find("not found"), std::string::npos);

  core::MediaRef wrong_size;
  wrong_size.md5sum = good_md5_;
  wrong_size.declared_size = 999;
  r = Resolve(wrong_size);
  EXPECT_EQ(r.state, core::MediaState::kCorrupt);
  EXPECT_EQ(r.bytes, good_) << "corrupt bytes are still attached";
  EXPECT_NE(r.problem.find("999"), std::string::npos);

  // Bytes stored under the record's MD5 name but with other content.
  test::WriteFile(dir_ / ("media/" + std::string(32, 'b')), "tampered");
  core::MediaRef tampered;
  tampered.md5sum = std::string(32, 'B');  // upper case is the same digest
  r = Resolve(tampered);
  EXPECT_EQ(r.state, core::MediaState::kCorrupt);
  EXPECT_NE(r.problem.find("MD5"), std::string::npos);
}

// Issue #8 items 1 and 2: nothing outside the source is ever read, and a
// FIFO, a device or a directory never blocks or breaks a lookup.
TEST_F(MediaStoreTest, SymlinksOutOfTheSourceFifosAndDirectoriesAreRefused) {
  CheckHostileMedia(true);
}
TEST_F(MediaStoreTest, SymlinksRefusedWithoutOpenat2Too) {
  core::UseOpenat2ForTesting(false);
  CheckHostileMedia(false);
  core::UseOpenat2ForTesting(true);
}

void MediaStoreTest::CheckHostileMedia(bool openat2) {
  test::TempDir outside;
  test::WriteFile(outside / "secret", "TOP SECRET");
  test::WriteFile(outside / "passwd", "root:x:0:0");
  const std::string secret_md5 = core::ToHex(core::Md5(std::string("TOP SECRET")));
  ASSERT_EQ(::symlink((outside / "secret").c_str(), (dir_ / ("media/" + secret_md5)).c_str()), 0);
  ASSERT_EQ(::symlink("../../../../../../etc/hostname", (dir_ / "media/relative-out").c_str()), 0);
  ASSERT_EQ(::symlink(outside.path().c_str(), (dir_ / "media/linkdir").c_str()), 0);
  ASSERT_EQ(::mkfifo((dir_ / "media/fifo").c_str(), 0600), 0);
  ASSERT_EQ(::mkdir((dir_ / "media/adir").c_str(), 0700), 0);
  // A symlink that stays inside the source is fine.
  ASSERT_EQ(::symlink(good_md5_.c_str(), (dir_ / "media/inside-link").c_str()), 0);

  core::MediaRef by_md5;
  by_md5.md5sum = secret_md5;
  // With openat2 the reason says where the link leads; the walk refuses every link.
  const char* why = openat2 ? "outside" : "symlink";
  auto r = Resolve(by_md5);
  EXPECT_EQ(r.state, core::MediaState::kMissing);
  EXPECT_TRUE(r.bytes.empty());
  EXPECT_NE(r.problem.find(why), std::string::npos) << r.problem;

  for (const char* id : {"relative-out", "LINKDIR"}) {
    core::MediaRef m;
    m.sdkfileid = id;
    r = Resolve(m);
    EXPECT_EQ(r.state, core::MediaState::kMissing) << id;
    EXPECT_TRUE(r.bytes.empty()) << id;
    EXPECT_NE(r.problem.find(why), std::string::npos) << id << ": " << r.problem;
  }
  core::MediaRef fifo;
  fifo.sdkfileid = "fifo";
  r = Resolve(fifo);  // must not block
  EXPECT_EQ(r.state, core::MediaState::kMissing);
  EXPECT_NE(r.problem.find("FIFO"), std::string::npos) << r.problem;

  core::MediaRef dir;
  dir.sdkfileid = "adir";
  r = Resolve(dir);
  EXPECT_EQ(r.state, core::MediaState::kMissing);
  EXPECT_NE(r.problem.find("directory"), std::string::npos) << r.problem;

  core::MediaRef inside;
  inside.sdkfileid = "inside-link";
  r = Resolve(inside);
  if (openat2) {
    EXPECT_EQ(r.state, core::MediaState::kOk);
    EXPECT_EQ(r.bytes, good_);
  } else {
    EXPECT_EQ(r.state, core::MediaState::kMissing);  // the walk follows no link at all
  }
}

TEST_F(MediaStoreTest, AMediaDirectoryOrIndexOutsideTheSourceIsAnError) {
  test::TempDir outside;
  test::WriteFile(outside / "media/index.csv", "sdkfileid,path\n");
  test::TempDir src;
  ASSERT_EQ(::symlink((outside / "media").c_str(), (src / "media").c_str()), 0);
  auto store = MediaStore::Open(src.path());
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("outside"), std::string::npos) << store.status().ToString();

  test::TempDir src2;
  ASSERT_EQ(::mkdir((src2 / "media").c_str(), 0700), 0);
  ASSERT_EQ(::symlink((outside / "media/index.csv").c_str(), (src2 / "media/index.csv").c_str()), 0);
  store = MediaStore::Open(src2.path());
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("outside"), std::string::npos) << store.status().ToString();
}

// Issue #8 item 3: the bytes that go into an item are the bytes verified.
TEST_F(MediaStoreTest, AFileChangedAfterItWasFoundIsVerifiedOnWhatIsRead) {
  auto store = MediaStore::Open(dir_.path());
  ASSERT_TRUE(store.ok());
  std::string original(100000, 'x');
  const std::string md5 = core::ToHex(core::Md5(original));
  test::WriteFile(dir_ / ("media/" + md5), original);

  core::MediaRef shrunk;
  shrunk.md5sum = md5;
  shrunk.declared_size = original.size();
  store->Resolve(shrunk);
  ASSERT_EQ(shrunk.state, core::MediaState::kFound);
  ASSERT_EQ(::truncate((dir_ / ("media/" + md5)).c_str(), 10), 0);
  ASSERT_TRUE(store->Load(shrunk, 1 << 20).ok());
  EXPECT_EQ(shrunk.state, core::MediaState::kCorrupt);
  EXPECT_EQ(shrunk.bytes, std::string(10, 'x'));
  EXPECT_NE(shrunk.problem.find("100000"), std::string::npos) << shrunk.problem;

  // Rewritten in place, same size, other bytes.
  test::WriteFile(dir_ / ("media/" + md5), original);
  core::MediaRef rewritten;
  rewritten.md5sum = md5;
  rewritten.declared_size = original.size();
  store->Resolve(rewritten);
  std::string other(100000, 'y');
  test::WriteFile(dir_ / ("media/" + md5), other);
  ASSERT_TRUE(store->Load(rewritten, 1 << 20).ok());
  EXPECT_EQ(rewritten.state, core::MediaState::kCorrupt);
  EXPECT_EQ(rewritten.bytes, other);
  EXPECT_NE(rewritten.problem.find(core::ToHex(core::Md5(other))), std::string::npos)
      << "the note names the MD5 of the bytes attached: " << rewritten.problem;

  // Replaced by a FIFO between Resolve and Load: missing, never blocks.
  core::MediaRef swapped;
  swapped.md5sum = md5;
  store->Resolve(swapped);
  ASSERT_EQ(::unlink((dir_ / ("media/" + md5)).c_str()), 0);
  ASSERT_EQ(::mkfifo((dir_ / ("media/" + md5)).c_str(), 0600), 0);
  ASSERT_TRUE(store->Load(swapped, 1 << 20).ok());
  EXPECT_EQ(swapped.state, core::MediaState::kMissing);
  EXPECT_NE(swapped.problem.find("FIFO"), std::string::npos) << swapped.problem;
}

TEST_F(MediaStoreTest, SdkFileIdIndexAndTraversal) {
  core::MediaRef rec;
  rec.sdkfileid = "a+b/c";
  EXPECT_EQ(Resolve(rec).state, core::MediaState::kOk);

  core::MediaRef listed;
  listed.sdkfileid = "LISTED";
  auto r = Resolve(listed);
  EXPECT_EQ(r.state, core::MediaState::kOk);
  EXPECT_EQ(r.size, 6u);

  for (const char* id : {"EVIL", "ABS"}) {
    core::MediaRef evil;
    evil.sdkfileid = id;
    r = Resolve(evil);
    EXPECT_EQ(r.state, core::MediaState::kMissing) << id;
    EXPECT_TRUE(r.bytes.empty());
  }
  // An md5sum field is only a file name when it is 32 hex digits.
  core::MediaRef sneaky;
  sneaky.md5sum = "../../../../etc/passwd";
  sneaky.sdkfileid = "..";
  r = Resolve(sneaky);
  EXPECT_EQ(r.state, core::MediaState::kMissing);
  EXPECT_TRUE(r.bytes.empty());

  // Issue #8 item 16: an sdkfileid too long for a file name is stored
  // under the SHA-256 hex of the id.
  const std::string long_id = std::string(300, 'A') + "+/=";
  const std::string hashed = core::ToHex(core::Sha256(long_id));
  EXPECT_EQ(SdkFileIdName(long_id), hashed);
  test::WriteFile(dir_ / ("media/" + hashed), "long id bytes");
  core::MediaRef too_long;
  too_long.sdkfileid = long_id;
  r = Resolve(too_long);
  EXPECT_EQ(r.state, core::MediaState::kOk) << r.problem;
  EXPECT_EQ(r.bytes, "long id bytes");
  EXPECT_EQ(SdkFileIdName(std::string(255, 'A')), std::string(255, 'A'));

  EXPECT_FALSE(IsSafeRelativePath("a/../b"));
  EXPECT_FALSE(IsSafeRelativePath("a//b"));
  EXPECT_TRUE(IsSafeRelativePath("a/b.c"));
}

TEST(Directory, ColumnsAndIssues) {
  auto d = Directory::Parse("User_ID,Display Name,Phone,E-Mail\nu1,Ann,+1 650 253 0000,ann@x.com\n"
                            ",nobody,,\nu1,dup,,\n",
                            "dir.csv");
  ASSERT_TRUE(d.ok());
  ASSERT_NE(d->Find("u1"), nullptr);
  EXPECT_EQ(d->Find("u1")->name, "Ann");
  EXPECT_EQ(d->Find("u1")->email, "ann@x.com");
  EXPECT_EQ(d->issues().size(), 2u);
  auto bad = Directory::Parse("name,email\nx,y\n", "dir.csv");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("userid"), std::string::npos);
  EXPECT_FALSE(Directory::Load("/nonexistent/dir.csv").ok());
  EXPECT_EQ(ClassifyId("wmErxtDgAA9AW32YyyuYRimKr7D1KWlw"), IdKind::kExternal);
  EXPECT_EQ(ClassifyId("woody"), IdKind::kEmployee);
  EXPECT_EQ(ClassifyId("wbXXXXXXXXXXXXXXXXXXXX"), IdKind::kRobot);
}

}  // namespace
}  // namespace wxa::wecom
