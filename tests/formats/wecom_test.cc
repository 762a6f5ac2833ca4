#include <gtest/gtest.h>

#include <map>
#include <set>

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

class MediaStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    good_ = "%PDF-1.4 hello";
    good_md5_ = core::ToHex(core::Md5(good_));
    test::WriteFile(dir_ / ("media/" + good_md5_), good_);
    test::WriteFile(dir_ / "media/a-b_c", "recording");  // sdkfileid "a+b/c"
    test::WriteFile(dir_ / "media/sub/listed.bin", "listed");
    test::WriteFile(dir_ / "media/index.csv",
                    "sdkfileid,path\nLISTED,sub/listed.bin\nEVIL,../../etc/passwd\nABS,/etc/passwd\n");
  }
  core::MediaRef Resolve(core::MediaRef m) {
    auto store = MediaStore::Open(dir_ / "media");
    EXPECT_TRUE(store.ok());
    store->Resolve(m);
    issues_ = store->issues();
    return m;
  }
  test::TempDir dir_;
  std::string good_, good_md5_;
  std::vector<CsvIssue> issues_;
};

TEST_F(MediaStoreTest, ByMd5VerifiedOnce) {
  core::MediaRef m;
  m.md5sum = good_md5_;
  m.declared_size = good_.size();
  auto r = Resolve(m);
  EXPECT_EQ(r.state, core::MediaState::kOk);
  EXPECT_EQ(r.size, good_.size());
  EXPECT_TRUE(r.problem.empty());
  EXPECT_EQ(issues_.size(), 2u);  // the two unsafe index.csv rows
}

TEST_F(MediaStoreTest, CacheIsBounded) {
  std::vector<std::string> md5s;
  for (int i = 0; i < 10; ++i) {
    std::string bytes = "file " + std::to_string(i);
    md5s.push_back(core::ToHex(core::Md5(bytes)));
    test::WriteFile(dir_ / ("media/" + md5s.back()), bytes);
  }
  auto store = MediaStore::Open(dir_ / "media", 4);
  ASSERT_TRUE(store.ok());
  for (int pass = 0; pass < 2; ++pass) {
    for (int i = 0; i < 10; ++i) {
      core::MediaRef m;
      m.md5sum = md5s[i];
      m.declared_size = std::string("file " + std::to_string(i)).size();
      store->Resolve(m);
      EXPECT_EQ(m.state, core::MediaState::kOk) << i;
      EXPECT_LE(store->stats().cached, 4u);
    }
  }
  // Evicted verdicts are checked again, correctly.
  EXPECT_GT(store->stats().files_verified, 10u);
  // A file looked up twice in a row is verified once.
  auto again = MediaStore::Open(dir_ / "media", 4);
  for (int k = 0; k < 2; ++k) {
    core::MediaRef m;
    m.md5sum = md5s[0];
    again->Resolve(m);
  }
  EXPECT_EQ(again->stats().files_verified, 1u);
}

TEST_F(MediaStoreTest, MissingAndCorrupt) {
  core::MediaRef missing;
  missing.md5sum = std::string(32, 'a');
  auto r = Resolve(missing);
  EXPECT_EQ(r.state, core::MediaState::kMissing);
  EXPECT_TRUE(r.path.empty());
  EXPECT_NE(r.problem.find("not found"), std::string::npos);

  core::MediaRef wrong_size;
  wrong_size.md5sum = good_md5_;
  wrong_size.declared_size = 999;
  r = Resolve(wrong_size);
  EXPECT_EQ(r.state, core::MediaState::kCorrupt);
  EXPECT_FALSE(r.path.empty()) << "corrupt bytes are still attached";
  EXPECT_NE(r.problem.find("999"), std::string::npos);

  // Bytes stored under the record's MD5 name but with other content.
  test::WriteFile(dir_ / ("media/" + std::string(32, 'b')), "tampered");
  core::MediaRef tampered;
  tampered.md5sum = std::string(32, 'b');
  r = Resolve(tampered);
  EXPECT_EQ(r.state, core::MediaState::kCorrupt);
  EXPECT_NE(r.problem.find("MD5"), std::string::npos);
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
    EXPECT_EQ(r.path.find("/etc/passwd"), std::string::npos);
  }
  // An md5sum field is only a file name when it is 32 hex digits.
  core::MediaRef sneaky;
  sneaky.md5sum = "../../../../etc/passwd";
  sneaky.sdkfileid = "..";
  r = Resolve(sneaky);
  EXPECT_EQ(r.state, core::MediaState::kMissing);
  EXPECT_TRUE(r.path.empty());

  core::MediaRef too_long;
  too_long.sdkfileid = std::string(300, 'A');
  r = Resolve(too_long);
  EXPECT_EQ(r.state, core::MediaState::kMissing);
  EXPECT_NE(r.problem.find("index.csv"), std::string::npos);

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
