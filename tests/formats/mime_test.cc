// Rendering: golden files for every msgtype of the fixture, determinism, an
// independent parse of every golden item by Python's email package, and the
// renderer's defences (header injection, hostile attachment names). The
// field-by-field comparisons with GMime live in tests/mime.
#include <gtest/gtest.h>

#include <cstdlib>

#include <fmt/format.h>

#include "engine/mapping/mapper.h"
#include "formats/core/hash.h"
#include "formats/core/json_writer.h"
#include "formats/core/text.h"
#include "formats/mime/renderer.h"
#include "formats/wecom/media_store.h"
#include "formats/wecom/parser.h"
#include "formats/wecom/record_reader.h"
#include "tests/test_util.h"

namespace wxa::mime {
namespace {

struct Rendered {
  std::string name;   // golden file name
  core::Item item;
  RenderInput input;
  std::string bytes;
};

// Parses and renders the whole golden fixture, as an import would.
class GoldenFixture : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    InitGMime();
    const std::string dir = test::SourcePath("tests/data/golden");
    auto directory = wecom::Directory::Load(dir + "/directory.csv");
    ASSERT_TRUE(directory.ok());
    directory_ = new wecom::Directory(std::move(*directory));
    auto mapper = mapping::Mapper::Create(directory_, dir + "/mapping.csv", "", {});
    ASSERT_TRUE(mapper.ok()) << mapper.status().ToString();
    mapper_ = new mapping::Mapper(std::move(*mapper));
    auto media = wecom::MediaStore::Open(dir);
    ASSERT_TRUE(media.ok());
    auto reader = wecom::RecordReader::Open(dir);
    ASSERT_TRUE(reader.ok());
    std::vector<wecom::RawRecord> recs;
    while (true) {
      auto more = reader->NextBatch(100, 1 << 20, &recs);
      ASSERT_TRUE(more.ok());
      if (!*more) break;
    }
    wecom::RecordParser parser({"golden"});
    Renderer renderer;
    items_ = new std::vector<Rendered>();
    items_->reserve(recs.size());  // RenderInput points into the item
    for (const auto& rec : recs) {
      auto parsed = parser.Parse(rec, "records.jsonl");
      ASSERT_TRUE(parsed.ok());
      Rendered r;
      r.item = std::move(parsed->item);
      r.name = fmt::format("{:02}-{}.eml", rec.line, r.item.msgtype);
      for (auto& m : r.item.media) {
        media->Resolve(m);
        ASSERT_TRUE(media->Load(m, 1 << 30).ok());
      }
      items_->push_back(std::move(r));
      Rendered& back = items_->back();
      core::Participants who = mapper_->ParticipantsFor(back.item);
      back.input = RenderInput{&back.item, who.from, who.to};
      auto bytes = renderer.Render(back.input);
      ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
      back.bytes = std::move(*bytes);
    }
  }
  static void TearDownTestSuite() {
    delete items_;
    delete mapper_;
    delete directory_;
  }
  static wecom::Directory* directory_;
  static mapping::Mapper* mapper_;
  static std::vector<Rendered>* items_;
};
wecom::Directory* GoldenFixture::directory_ = nullptr;
mapping::Mapper* GoldenFixture::mapper_ = nullptr;
std::vector<Rendered>* GoldenFixture::items_ = nullptr;

TEST_F(GoldenFixture, MatchesGoldenFiles) {
  const bool update = std::getenv("WXA_UPDATE_GOLDEN") != nullptr;
  const std::string dir = test::SourcePath("tests/data/golden/eml/");
  ASSERT_EQ(items_->size(), 38u);
  for (const auto& r : *items_) {
    if (update) {
      test::WriteFile(dir + r.name, r.bytes);
      continue;
    }
    std::string golden = test::ReadFile(dir + r.name);
    ASSERT_FALSE(golden.empty()) << "missing golden file " << r.name
                                 << " (WXA_UPDATE_GOLDEN=1 writes it)";
    EXPECT_EQ(r.bytes, golden) << r.name << " differs from its golden file";
  }
}

TEST_F(GoldenFixture, RenderingIsDeterministic) {
  Renderer other;  // a second renderer, as on another thread
  for (const auto& r : *items_) {
    auto again = other.Render(r.input);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, r.bytes) << r.name;
    auto size = other.MeasureSize(r.input);
    ASSERT_TRUE(size.ok());
    EXPECT_EQ(*size, r.bytes.size()) << r.name;
    EXPECT_LE(RenderedSizeLowerBound(r.item), r.bytes.size()) << r.name;
  }
}

TEST_F(GoldenFixture, PythonEmailParsesEveryItem) {
  test::TempDir dir;
  std::string expect;
  core::JsonWriter j(&expect);
  j.BeginArray();
  for (const auto& r : *items_) {
    test::WriteFile(dir / r.name, r.bytes);
    j.BeginObject();
    j.Field("file", r.name);
    j.Field("subject", SubjectFor(r.input));
    j.Field("from", r.input.from.address);
    // To is never empty: the recipients; else the room of a group; else the
    // sender when the record names only the sender; else the empty group
    // undisclosed-recipients:; (no address).
    j.Key("to").BeginArray();
    if (!r.input.to.empty()) {
      for (const auto& t : r.input.to) j.String(t.address);
    } else if (r.item.is_group()) {
      j.String(SyntheticAddress("room-" + r.item.roomid));
    } else if (!r.item.to.empty()) {
      j.String(r.input.from.address);
    }
    j.EndArray();
    j.Field("date", r.item.msgtime_ms / 1000);
    // The first line of the text, after the renderer's clean-up.
    std::string first = r.item.text.substr(0, r.item.text.find('\n'));
    bool plain = core::IsValidUtf8(first);
    for (char c : first) plain = plain && static_cast<unsigned char>(c) >= 0x20;
    j.Field("text", plain ? first : std::string());
    j.Key("attachments").BeginArray();
    std::vector<std::string> names = AttachmentFileNames(r.item);
    size_t n = 0;
    for (const auto& m : r.item.media) {
      if (!m.has_bytes()) continue;
      j.BeginObject().Field("name", names.at(n++));
      j.Field("sha256", core::ToHex(core::Sha256(m.bytes))).EndObject();
    }
    if (r.item.attach_raw) {
      j.BeginObject().Field("name", names.at(n++));
      j.Field("sha256", core::ToHex(core::Sha256(r.item.raw))).EndObject();
    }
    EXPECT_EQ(n, names.size());
    j.EndArray();
    j.EndObject();
  }
  j.EndArray();
  test::WriteFile(dir / "expect.json", expect);
  std::string out;
  int rc = test::Run(fmt::format("{} {} {}", WXA_PYTHON,
                                 test::ShellQuote(test::SourcePath("tests/tools/check_eml.py")),
                                 test::ShellQuote(dir.path())),
                     &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("checked 38 messages, 0 failed"), std::string::npos) << out;
}

TEST_F(GoldenFixture, AttachmentNamesAreSafe) {
  for (const auto& r : *items_) {
    size_t pos = 0;
    while ((pos = r.bytes.find("filename", pos)) != std::string::npos) {
      std::string line = r.bytes.substr(pos, r.bytes.find("\r\n", pos) - pos);
      // RFC 2047 words are base64 (which has '/'): the names they carry are
      // checked decoded, below; the rest of the line as written.
      for (size_t w; (w = line.find("=?")) != std::string::npos;) {
        const size_t charset_end = line.find('?', w + 2);             // =?charset?B?text?=
        const size_t encoding_end = line.find('?', charset_end + 1);
        const size_t e = encoding_end == std::string::npos ? encoding_end : line.find("?=", encoding_end + 1);
        ASSERT_NE(e, std::string::npos) << r.name << ": " << line;
        line.erase(w, e + 2 - w);
      }
      // No separator and no leading dot: the name cannot climb out of a folder
      // whoever saves it.
      EXPECT_EQ(line.find('/'), std::string::npos) << r.name << ": " << line;
      EXPECT_EQ(line.find('\\'), std::string::npos) << r.name << ": " << line;
      EXPECT_EQ(line.find("filename=."), std::string::npos) << r.name << ": " << line;
      EXPECT_EQ(line.find("filename=\"."), std::string::npos) << r.name << ": " << line;
      ++pos;
    }
    for (const auto& name : AttachmentFileNames(r.item)) {
      EXPECT_EQ(name.find_first_of("/\\"), std::string::npos) << r.name << ": " << name;
      EXPECT_FALSE(name.empty() || name[0] == '.') << r.name << ": " << name;
    }
  }
}

TEST_F(GoldenFixture, NonAsciiFileNamesInBothParameterForms) {
  const Rendered* file = nullptr;
  for (const auto& r : *items_) {
    if (r.name == "12-file.eml") file = &r;
  }
  ASSERT_NE(file, nullptr);
  // RFC 2231 for standard readers, an RFC 2047 word for Outlook and older
  // clients, in both Content-Type and Content-Disposition.
  EXPECT_NE(file->bytes.find("name*=UTF-8''%E8%B5%84%E6%96%99%20report.pdf"), std::string::npos);
  EXPECT_NE(file->bytes.find("filename*=UTF-8''%E8%B5%84%E6%96%99%20report.pdf"), std::string::npos);
  EXPECT_NE(file->bytes.find(" name=\"=?UTF-8?"), std::string::npos);
  EXPECT_NE(file->bytes.find(" filename=\"=?UTF-8?"), std::string::npos);
}

TEST_F(GoldenFixture, RecallLinksToTheRecalledItem) {
  const Rendered* recall = nullptr;
  const Rendered* original = nullptr;
  for (const auto& r : *items_) {
    if (r.item.kind == core::ItemKind::kRecall) recall = &r;
    if (r.item.msgid == "CAQQluDa4QUY0On2rYSAgAMgzPrShAE=") original = &r;
  }
  ASSERT_TRUE(recall && original);
  std::string mid = "<" + MessageIdFor(original->item.key) + ">";
  EXPECT_NE(recall->bytes.find("In-Reply-To: " + mid), std::string::npos);
  EXPECT_NE(original->bytes.find("Message-ID: " + mid), std::string::npos);
  EXPECT_NE(recall->bytes.find("X-WeChat-Recalled-MsgId: CAQQluDa4QUY0On2rYSAgAMgzPrShAE="),
            std::string::npos);
}

core::Item SimpleItem() {
  core::Item it;
  it.msgid = "m1";
  it.key = core::ItemKey::For("wecom", "c", "m1");
  it.msgtype = "text";
  it.action = "send";
  it.from = "zhangsan";
  it.to = {"lisi"};
  it.msgtime_ms = 1603875600000;
  it.text = "hello";
  return it;
}

TEST(Renderer, SubjectsFollowTheProductStyle) {
  core::Item it = SimpleItem();
  RenderInput in{&it, {"zhangsan", "张三", "z@x.com"}, {{"lisi", "李四", "l@x.com"}}};
  EXPECT_EQ(SubjectFor(in), "WeChat: 张三 -> 李四");
  it.roomid = "项目组";
  EXPECT_EQ(SubjectFor(in), "WeChat group 项目组: 张三");
  it.roomid.clear();
  it.kind = core::ItemKind::kCall;
  it.label = "voice call (1:1)";
  it.call = core::CallInfo{"voice call (1:1)", 10, {}, {}};
  EXPECT_EQ(SubjectFor(in), "WeChat call: 张三 -> 李四 (0:10) [voice call (1:1)]");
}

TEST(Renderer, HeaderInjectionIsImpossible) {
  InitGMime();
  core::Item it = SimpleItem();
  it.msgid = "m\r\nBcc: victim@evil.example";
  it.roomid = "wr\r\nBcc: victim@evil.example";
  it.from = "a\r\nX-Evil: 1";
  RenderInput in{&it, {it.from, "Name\r\nBcc: victim@evil.example", "z@x.com"}, {{"lisi", "L", "l@x.com"}}};
  Renderer r;
  auto bytes = r.Render(in);
  ASSERT_TRUE(bytes.ok());
  std::string head = bytes->substr(0, bytes->find("\r\n\r\n"));
  EXPECT_EQ(head.find("\r\nBcc:"), std::string::npos) << head;
  EXPECT_EQ(head.find("\r\nX-Evil:"), std::string::npos) << head;
  EXPECT_NE(head.find("X-WeChat-MsgId: m Bcc: victim@evil.example"), std::string::npos) << head;
}

TEST(Renderer, DuplicateAttachmentNamesAreNumbered) {
  InitGMime();
  core::Item it = SimpleItem();
  for (int i = 0; i < 2; ++i) {
    core::MediaRef m;
    m.role = "file";
    m.filename = "same.pdf";
    m.extension = "pdf";
    m.path = "media/a";
    m.bytes = "%PDF-1.4 a";
    m.size = 10;
    m.state = core::MediaState::kOk;
    it.media.push_back(m);
  }
  RenderInput in{&it, {"a", "A", "a@x.com"}, {{"b", "B", "b@x.com"}}};
  Renderer r;
  auto bytes = r.Render(in);
  ASSERT_TRUE(bytes.ok());
  EXPECT_NE(bytes->find("filename=same.pdf"), std::string::npos);
  EXPECT_NE(bytes->find("filename=\"same (2).pdf\""), std::string::npos) << *bytes;
}

TEST(Renderer, ContentTypes) {
  EXPECT_EQ(GuessContentType("PDF", ""), "application/pdf");
  EXPECT_EQ(GuessContentType("", "#!AMR\n"), "audio/amr");
  EXPECT_EQ(GuessContentType("", std::string("\0\0\0\x18" "ftypmp42", 12)), "video/mp4");
  EXPECT_EQ(GuessContentType("weird", "????"), "application/octet-stream");
  EXPECT_EQ(SyntheticAddress("wm../x y"), "wm._x_y@wecom.invalid");
  EXPECT_EQ(SyntheticAddress(""), "unknown@wecom.invalid");
}

}  // namespace
}  // namespace wxa::mime
