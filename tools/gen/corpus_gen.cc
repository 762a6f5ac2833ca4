#include "tools/gen/corpus_gen.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ctime>
#include <vector>

#include <fmt/format.h>

#include "formats/core/file.h"
#include "formats/core/hash.h"
#include "formats/core/json_writer.h"
#include "formats/core/text.h"

namespace wxa::gen {

namespace {

// xoshiro256** seeded through splitmix64: fast, and the same everywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (auto& s : s_) {
      seed += 0x9E3779B97F4A7C15ull;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      s = z ^ (z >> 31);
    }
  }
  uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  uint64_t Below(uint64_t n) { return n == 0 ? 0 : Next() % n; }
  int Range(int lo, int hi) { return lo + static_cast<int>(Below(static_cast<uint64_t>(hi - lo + 1))); }
  bool Chance(double p) { return Uniform() < p; }
  double Normal() {
    double u1 = std::max(Uniform(), 1e-300), u2 = Uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }
  double LogNormal(double median, double sigma) { return median * std::exp(sigma * Normal()); }
  template <typename T>
  const T& Pick(const std::vector<T>& v) { return v[Below(v.size())]; }

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

constexpr const char* kSurnames[] = {"王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周",
                                     "徐", "孙", "马", "朱", "胡", "郭", "何", "高", "林", "罗"};
constexpr const char* kGiven[] = {"伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋",
                                  "勇", "艳", "杰", "娟", "涛", "明", "超", "秀英", "霞", "平",
                                  "刚", "桂英", "建华", "晓东", "文", "欣怡", "子涵", "浩然"};
constexpr const char* kPinyinSurnames[] = {"wang", "li", "zhang", "liu", "chen", "yang", "huang",
                                           "zhao", "wu", "zhou", "xu", "sun", "ma", "zhu", "hu",
                                           "guo", "he", "gao", "lin", "luo"};
constexpr const char* kPhrases[] = {
    "好的，收到", "明天上午十点开会", "请把报价单发我一下", "客户那边已经确认了",
    "Let's sync after lunch.", "合同第三条需要再改一下", "已经发邮件了，请查收", "谢谢！",
    "Please review the attached draft before Friday.", "这个价格可以接受吗？", "[微笑]",
    "下周一出差上海", "OK, I'll call the supplier.", "发票已经开好了", "晚点再聊 👍",
    "库存还剩多少？", "The shipment left the warehouse this morning.", "老板同意了",
    "麻烦尽快回复", "会议改到下午三点", "Can you send me the updated forecast?",
    "项目进度延迟了两天", "我在路上，马上到", "收到，我来处理", "质检报告在附件里"};
constexpr const char* kFileNames[] = {"报价单", "合同", "季度报告", "invoice", "forecast",
                                      "会议纪要", "spec", "presentation", "质检报告", "budget"};
constexpr const char* kFileExts[] = {"pdf", "docx", "xlsx", "pptx", "zip", "txt", "csv"};

struct User {
  std::string id;
  std::string name;
  std::string mobile_digits;  // national, 11 digits
  std::string mobile_written; // as in the directory
  std::string email;          // as in the directory (may be empty or invalid)
  std::string csv_mailbox;    // mapped through mapping.csv when non-empty
  bool csv_mailbox_known = true;
};

struct Conversation {
  std::string roomid;                // empty for 1:1
  std::vector<std::string> members;  // participant ids
  double weight = 1;
};

struct Media {
  std::string md5;
  std::string sdkfileid;
  uint64_t size = 0;
};

class Generator {
 public:
  explicit Generator(const GenOptions& o) : o_(o), rng_(o.seed) {}

  Result<GenSummary> Run() {
    if (o_.out.empty()) return Status::InvalidArgument("gen: --out is required");
    if (o_.users < 2) return Status::InvalidArgument("gen: --users must be at least 2");
    if (o_.days < 1) return Status::InvalidArgument("gen: --days must be at least 1");
    if (core::IsDirectory(o_.out) && core::PathExists(core::JoinPath(o_.out, "directory.csv"))) {
      return Status::AlreadyExists(fmt::format("gen: {} already holds a corpus", o_.out));
    }
    media_dir_ = core::JoinPath(o_.out, "media");
    WXA_RETURN_IF_ERROR(env_->CreateDirs(media_dir_));
    MakeUsers();
    MakeConversations();
    WXA_RETURN_IF_ERROR(WriteDirectory());
    WXA_RETURN_IF_ERROR(WriteMapping());
    WXA_RETURN_IF_ERROR(WriteMailboxes());
    for (int d = 0; d < o_.days; ++d) WXA_RETURN_IF_ERROR(WriteDay(d));
    return summary_;
  }

 private:
  std::string RandomToken(size_t n, std::string_view alphabet) {
    std::string s;
    for (size_t i = 0; i < n; ++i) s.push_back(alphabet[Below(alphabet.size())]);
    return s;
  }
  uint64_t Below(uint64_t n) { return rng_.Below(n); }

  std::string ExternalId() {
    return (rng_.Chance(0.5) ? "wm" : "wo") +
           RandomToken(30, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-");
  }

  void MakeUsers() {
    for (int i = 0; i < o_.users; ++i) {
      User u;
      size_t s = Below(std::size(kSurnames));
      u.id = fmt::format("{}{:04}", kPinyinSurnames[s], i);
      u.name = std::string(kSurnames[s]) + kGiven[Below(std::size(kGiven))];
      u.mobile_digits = fmt::format("13{}{:08}", Below(10), 10000000 + i * 7919 % 89999999);
      switch (Below(3)) {
        case 0: u.mobile_written = u.mobile_digits; break;
        case 1: u.mobile_written = "+86" + u.mobile_digits; break;
        default:
          u.mobile_written = fmt::format("+86 {}-{}-{}", u.mobile_digits.substr(0, 3),
                                         u.mobile_digits.substr(3, 4), u.mobile_digits.substr(7));
      }
      double r = rng_.Uniform();
      if (r < 0.05) {
        u.email = "";  // no mailbox at all: unmapped
      } else if (r < 0.07) {
        u.email = "not-an-address";
      } else {
        u.email = u.id + "@corp.example.com";
      }
      if (rng_.Chance(0.15) && !u.email.empty()) {
        u.csv_mailbox = fmt::format("{}.{}@corp.example.com", kPinyinSurnames[s], i);
        // A CSV target missing from the mailbox list: the rule falls back to the e-mail.
        u.csv_mailbox_known = !rng_.Chance(0.1);
      }
      users_.push_back(u);
    }
    // Index 0 is always mapped, index 1 never (so both cases exist in small corpora).
    users_[0].email = users_[0].id + "@corp.example.com";
    users_[1].email = "";
    users_[1].csv_mailbox.clear();
  }

  void MakeConversations() {
    const int n = o_.users;
    for (int i = 0; i < n; ++i) {
      int partners = std::min(n - 1, 3);
      for (int k = 0; k < partners; ++k) {
        int j = static_cast<int>(Below(n));
        if (j == i) j = (i + 1) % n;
        convs_.push_back({"", {users_[i].id, users_[j].id}, 3});
      }
      if (rng_.Chance(0.5)) convs_.push_back({"", {users_[i].id, ExternalId()}, 1.5});
    }
    // An unmapped user talking to an outsider: items nobody can receive.
    convs_.push_back({"", {users_[1].id, ExternalId()}, 1});
    int groups = std::max(1, n / 4);
    for (int g = 0; g < groups; ++g) {
      Conversation c;
      c.roomid = "wr" + RandomToken(22, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789");
      int size = std::min(n, rng_.Range(3, 12));
      for (int k = 0; k < size; ++k) {
        const std::string& id = users_[Below(n)].id;
        if (std::find(c.members.begin(), c.members.end(), id) == c.members.end()) c.members.push_back(id);
      }
      if (rng_.Chance(0.4)) c.members.push_back(ExternalId());
      if (rng_.Chance(0.2)) c.members.push_back("wb" + RandomToken(22, "abcdefghijklmnopqrstuvwxyz0123456789"));
      if (c.members.size() < 2) c.members.push_back(users_[0].id);
      c.weight = 2.0 + c.members.size() * 0.3;
      convs_.push_back(std::move(c));
    }
    for (const auto& c : convs_) total_weight_ += c.weight;
  }

  const Conversation& PickConversation() {
    double r = rng_.Uniform() * total_weight_;
    for (const auto& c : convs_) {
      if ((r -= c.weight) <= 0) return c;
    }
    return convs_.back();
  }

  // A generated corpus needs no durability, only no half-written files.
  Status Put(const std::string& path, std::string_view data) {
    return core::WriteFileAtomic(env_, path + ".tmp", path, data, core::Durability::kNone);
  }

  Status WriteText(const std::string& name, const std::string& text) {
    return Put(core::JoinPath(o_.out, name), text);
  }

  Status WriteDirectory() {
    std::string csv = "userid,name,mobile,email\n";
    for (const auto& u : users_) {
      csv += fmt::format("{},{},{},{}\n", u.id, u.name, u.mobile_written, u.email);
    }
    return WriteText("directory.csv", csv);
  }

  Status WriteMapping() {
    // What spreadsheets produce: a BOM, quotes, spaces, numbers written many ways.
    std::string csv = "\xEF\xBB\xBFmobile,mailbox\r\n";
    for (const auto& u : users_) {
      if (u.csv_mailbox.empty()) continue;
      std::string m;
      switch (Below(3)) {
        case 0: m = "+86 " + u.mobile_digits; break;
        case 1: m = "0086" + u.mobile_digits; break;
        default: m = u.mobile_digits;
      }
      csv += fmt::format("\"{}\" , {}\r\n", m, u.csv_mailbox);
    }
    csv += "not-a-number,someone@corp.example.com\r\n";
    return WriteText("mapping.csv", csv);
  }

  Status WriteMailboxes() {
    std::string txt = "# mailboxes that exist in the target tenant\n";
    for (const auto& u : users_) {
      if (u.email.find('@') != std::string::npos) txt += u.email + "\n";
      if (!u.csv_mailbox.empty() && u.csv_mailbox_known) txt += u.csv_mailbox + "\n";
    }
    return WriteText("mailboxes.txt", txt);
  }

  // Bytes that look like the format (magic number first), then noise.
  Result<Media> WriteMedia(std::string_view kind, uint64_t size, bool with_md5) {
    std::string magic;
    if (kind == "jpg") magic = "\xFF\xD8\xFF\xE0\x00\x10JFIF";
    else if (kind == "png") magic = "\x89PNG\r\n\x1A\n";
    else if (kind == "gif") magic = "GIF89a";
    else if (kind == "amr") magic = "#!AMR\n";
    else if (kind == "mp4") magic = std::string("\x00\x00\x00\x18""ftypmp42", 12);
    else if (kind == "pdf") magic = "%PDF-1.4\n";
    else if (kind == "docx" || kind == "xlsx" || kind == "pptx" || kind == "zip") magic = "PK\x03\x04";
    std::string data;
    data.resize(std::max<uint64_t>(size, magic.size()));
    std::memcpy(data.data(), magic.data(), magic.size());
    for (size_t i = magic.size(); i < data.size(); i += 8) {
      uint64_t v = rng_.Next();
      std::memcpy(data.data() + i, &v, std::min<size_t>(8, data.size() - i));
    }
    if (kind == "txt" || kind == "csv") {
      for (char& c : data) c = static_cast<char>('a' + (static_cast<unsigned char>(c) % 26));
    }
    Media m;
    m.size = data.size();
    m.sdkfileid = RandomToken(
        60 + Below(40), "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
    std::string name;
    if (with_md5) {
      m.md5 = core::ToHex(core::Md5(data));
      name = m.md5;
    } else {
      name = m.sdkfileid;
      for (char& c : name) c = c == '+' ? '-' : c == '/' ? '_' : c;
    }
    std::string path = core::JoinPath(media_dir_, name);
    if (!core::PathExists(path)) {
      WXA_RETURN_IF_ERROR(Put(path, data));
      summary_.media_files++;
      summary_.media_bytes += data.size();
    }
    return m;
  }

  uint64_t Scaled(double bytes, double cap) {
    return static_cast<uint64_t>(std::max(16.0, std::min(bytes, cap) * o_.media_scale));
  }

  void Envelope(core::JsonWriter& j, const std::string& msgid, const std::string& action,
                const std::string& from, const Conversation& c, int64_t t, const std::string& type) {
    j.BeginObject();
    j.Field("msgid", msgid).Field("action", action).Field("from", from);
    j.Key("tolist").BeginArray();
    for (const auto& m : c.members) {
      if (m != from) j.String(m);
    }
    j.EndArray();
    j.Field("roomid", c.roomid).Field("msgtime", t).Field("msgtype", type);
  }

  std::string Phrase() { return kPhrases[Below(std::size(kPhrases))]; }

  // One regular record; returns its msgtype.
  Result<std::string> Record(std::string* out, int64_t t, uint64_t seq) {
    const Conversation& c = PickConversation();
    const std::string& from = c.members[Below(c.members.size())];
    std::string msgid = fmt::format("{}_{}", 1000000000000000000ull + rng_.Below(8000000000000000000ull), t / 1000);
    if (from.rfind("wm", 0) == 0 || from.rfind("wo", 0) == 0) msgid += "_external";
    struct Weighted { const char* type; double w; };
    static const Weighted kMix[] = {
        {"text", 55}, {"image", 10}, {"voice", 5}, {"video", 2}, {"file", 5}, {"emotion", 3},
        {"link", 3}, {"location", 1}, {"card", 1}, {"mixed", 2}, {"chatrecord", 1},
        {"revoke", 2}, {"voiptext", 2}, {"meeting_voice_call", 0.5}, {"voip_doc_share", 0.3},
        {"markdown", 0.5}, {"news", 0.3}, {"todo", 0.3}, {"vote", 0.3}, {"collect", 0.2},
        {"redpacket", 0.5}, {"external_redpacket", 0.2}, {"meeting", 0.3}, {"calendar", 0.3},
        {"docmsg", 0.5}, {"sphfeed", 0.3}, {"agree", 0.2}, {"disagree", 0.1}, {"weapp", 0.5},
        {"qydiskfile", 0.2}, {"meeting_notification", 0.1}};
    double total = 0;
    for (const auto& m : kMix) total += m.w;
    double r = rng_.Uniform() * total;
    std::string type = "text";
    for (const auto& m : kMix) {
      if ((r -= m.w) <= 0) {
        type = m.type;
        break;
      }
    }
    if (type == "revoke" && recent_msgids_.empty()) type = "text";
    core::JsonWriter j(out);
    const std::string action = type == "revoke" ? "recall" : "send";
    Envelope(j, msgid, action, from, c, t, type);
    if (type == "text") {
      std::string text = Phrase();
      if (rng_.Chance(0.1)) text += "\n" + Phrase() + "\n" + Phrase();
      j.Key("text").BeginObject().Field("content", text).EndObject();
    } else if (type == "markdown") {
      j.Key("info").BeginObject().Field("content", "**" + Phrase() + "**\n- " + Phrase()).EndObject();
    } else if (type == "image" || type == "emotion" || type == "video" || type == "voice") {
      Media m;
      if (type == "image") {
        WXA_ASSIGN_OR_RETURN(m, ReuseOr("jpg", Scaled(rng_.LogNormal(120e3, 0.8), 8e6)));
        j.Key("image").BeginObject().Field("md5sum", m.md5).Field("filesize", m.size)
            .Field("sdkfileid", m.sdkfileid).EndObject();
      } else if (type == "emotion") {
        bool png = rng_.Chance(0.3);
        WXA_ASSIGN_OR_RETURN(m, ReuseOr(png ? "png" : "gif", Scaled(rng_.LogNormal(60e3, 0.7), 1e6)));
        j.Key("emotion").BeginObject().Field("type", png ? 2 : 1).Field("width", 240)
            .Field("height", 240).Field("imagesize", m.size).Field("sdkfileid", m.sdkfileid)
            .Field("md5sum", m.md5).EndObject();
      } else if (type == "video") {
        int len = rng_.Range(3, 120);
        WXA_ASSIGN_OR_RETURN(m, WriteMedia("mp4", Scaled(len * 60e3, 9e6), true));
        j.Key("video").BeginObject().Field("md5sum", m.md5).Field("filesize", m.size)
            .Field("play_length", len).Field("sdkfileid", m.sdkfileid).EndObject();
      } else {
        int len = rng_.Range(1, 60);
        WXA_ASSIGN_OR_RETURN(m, WriteMedia("amr", Scaled(len * 1600.0, 1e6), true));
        j.Key("voice").BeginObject().Field("md5sum", m.md5).Field("voice_size", m.size)
            .Field("play_length", len).Field("sdkfileid", m.sdkfileid).EndObject();
      }
    } else if (type == "file") {
      std::string ext = kFileExts[Below(std::size(kFileExts))];
      uint64_t size;
      if (o_.huge_files && (rng_.Chance(0.005) || !made_huge_)) {
        size = static_cast<uint64_t>(rng_.Range(10752, 20480)) * 1024;  // 10.5-20 MiB, unscaled
        made_huge_ = true;
      } else {
        size = Scaled(rng_.LogNormal(150e3, 1.6), 9.5e6);
      }
      Media m;
      WXA_ASSIGN_OR_RETURN(m, rng_.Chance(0.1) && !files_.empty() ? Result<Media>(rng_.Pick(files_))
                                                                   : WriteMedia(ext, size, true));
      files_.push_back(m);
      std::string name = fmt::format("{}-{}.{}", kFileNames[Below(std::size(kFileNames))], seq % 1000, ext);
      j.Key("file").BeginObject().Field("md5sum", m.md5).Field("filename", name)
          .Field("fileext", ext).Field("filesize", m.size).Field("sdkfileid", m.sdkfileid).EndObject();
    } else if (type == "link") {
      j.Key("link").BeginObject().Field("title", Phrase()).Field("description", Phrase())
          .Field("link_url", fmt::format("https://news.example.com/a/{}", seq))
          .Field("image_url", "https://img.example.com/x.png").EndObject();
    } else if (type == "location") {
      j.Key("location").BeginObject().Field("longitude", 121.4737 + rng_.Uniform() / 10)
          .Field("latitude", 31.2304 + rng_.Uniform() / 10).Field("address", "上海市黄浦区南京东路1号")
          .Field("title", "外滩").Field("zoom", 15).EndObject();
    } else if (type == "card") {
      j.Key("card").BeginObject().Field("corpname", "示例科技有限公司")
          .Field("userid", users_[Below(users_.size())].id).EndObject();
    } else if (type == "mixed") {
      Media m;
      WXA_ASSIGN_OR_RETURN(m, ReuseOr("jpg", Scaled(rng_.LogNormal(80e3, 0.6), 4e6)));
      std::string text_json, image_json;
      core::JsonWriter(&text_json).BeginObject().Field("content", Phrase()).EndObject();
      core::JsonWriter(&image_json).BeginObject().Field("md5sum", m.md5).Field("filesize", m.size)
          .Field("sdkfileid", m.sdkfileid).EndObject();
      j.Key("mixed").BeginObject().Key("item").BeginArray();
      j.BeginObject().Field("type", "text").Field("content", text_json).EndObject();
      j.BeginObject().Field("type", "image").Field("content", image_json).EndObject();
      j.EndArray().EndObject();
    } else if (type == "chatrecord") {
      j.Key("chatrecord").BeginObject().Field("title", "群聊的聊天记录").Key("item").BeginArray();
      int n = rng_.Range(2, 5);
      for (int k = 0; k < n; ++k) {
        std::string content;
        core::JsonWriter(&content).BeginObject().Field("content", Phrase()).EndObject();
        j.BeginObject().Field("type", "ChatRecordText").Field("msgtime", t / 1000 - 3600 + k * 60)
            .Field("content", content).Field("from_chatroom", rng_.Chance(0.5)).EndObject();
      }
      j.EndArray().EndObject();
    } else if (type == "revoke") {
      j.Key("revoke").BeginObject().Field("pre_msgid", rng_.Pick(recent_msgids_)).EndObject();
    } else if (type == "voiptext") {
      int invite = rng_.Range(1, 4);
      j.Key(rng_.Chance(0.5) ? "voiptext" : "info").BeginObject()
          .Field("callduration", rng_.Range(0, 3600)).Field("invitetype", invite).EndObject();
    } else if (type == "meeting_voice_call") {
      int len = rng_.Range(30, 1800);
      Media m;
      WXA_ASSIGN_OR_RETURN(m, WriteMedia("amr", Scaled(len * 2000.0, 8e6), false));
      std::string voiceid = "gr" + RandomToken(30, "0123456789abcdef");
      out->append(fmt::format(",\"voiceid\":\"{}\"", voiceid));
      j.Key("meeting_voice_call").BeginObject().Field("endtime", t / 1000 + len)
          .Field("sdkfileid", m.sdkfileid).Key("demofiledata").BeginArray()
          .BeginObject().Field("filename", "方案.docx").Field("demooperator", from)
          .Field("starttime", t / 1000 + 10).Field("endtime", t / 1000 + 20).EndObject()
          .EndArray().Key("sharescreendata").BeginArray()
          .BeginObject().Field("share", from).Field("starttime", t / 1000 + 30)
          .Field("endtime", t / 1000 + 90).EndObject().EndArray().EndObject();
    } else if (type == "voip_doc_share") {
      Media m;
      WXA_ASSIGN_OR_RETURN(m, WriteMedia("pptx", Scaled(rng_.LogNormal(300e3, 0.8), 8e6), true));
      out->append(fmt::format(",\"voipid\":\"gr{}\"", RandomToken(30, "0123456789abcdef")));
      j.Key("voip_doc_share").BeginObject().Field("filename", "方案演示.pptx").Field("md5sum", m.md5)
          .Field("filesize", m.size).Field("sdkfileid", m.sdkfileid).EndObject();
    } else if (type == "news") {
      j.Key("info").BeginObject().Key("item").BeginArray().BeginObject().Field("title", Phrase())
          .Field("description", Phrase()).Field("url", "https://news.example.com/n").Field("picurl", "https://img.example.com/p.jpg")
          .EndObject().EndArray().EndObject();
    } else if (type == "todo") {
      j.Key("todo").BeginObject().Field("title", "待办").Field("content", Phrase()).EndObject();
    } else if (type == "vote") {
      j.Field("votetitle", "午饭吃什么").Key("voteitem").BeginArray().String("面条").String("米饭")
          .String("饺子").EndArray().Field("votetype", rng_.Chance(0.5) ? 101 : 102)
          .Field("voteid", fmt::format("{}", rng_.Next() >> 1));
    } else if (type == "collect") {
      j.Key("collect").BeginObject().Field("room_name", "项目组").Field("creator", from)
          .Field("create_time", "2023-11-14 10:00:00").Field("title", "出差登记").Key("details")
          .BeginArray().BeginObject().Field("id", static_cast<uint64_t>(11101571002822706744ull))
          .Field("ques", "出发日期").Field("type", "Date").EndObject().EndArray().EndObject();
    } else if (type == "redpacket" || type == "external_redpacket") {
      j.Key("redpacket").BeginObject().Field("type", rng_.Range(1, 3)).Field("wish", "恭喜发财")
          .Field("totalcnt", rng_.Range(1, 10)).Field("totalamount", rng_.Range(100, 50000)).EndObject();
    } else if (type == "meeting") {
      j.Key("meeting").BeginObject().Field("topic", "周例会").Field("starttime", t / 1000 + 3600)
          .Field("endtime", t / 1000 + 7200).Field("address", "3楼会议室").Field("remarks", Phrase())
          .Field("meetingtype", 101).Field("meetingid", static_cast<uint64_t>(11101571002822706744ull))
          .Field("status", 1).EndObject();
    } else if (type == "calendar") {
      j.Key("calendar").BeginObject().Field("title", "客户拜访").Field("creatorname", "王伟")
          .Key("attendeename").BeginArray().String("李娜").String("张强").EndArray()
          .Field("starttime", t / 1000 + 86400).Field("endtime", t / 1000 + 90000)
          .Field("place", "客户办公室").Field("remarks", Phrase()).EndObject();
    } else if (type == "docmsg") {
      j.Key("doc").BeginObject().Field("title", "项目计划").Field("link_url", "https://doc.weixin.qq.com/doc/x")
          .Field("doc_creator", from).EndObject();
    } else if (type == "sphfeed") {
      j.Key("sphfeed").BeginObject().Field("feed_type", 4).Field("sph_name", "示例视频号")
          .Field("feed_desc", Phrase()).EndObject();
    } else if (type == "agree" || type == "disagree") {
      j.Key(type).BeginObject().Field("userid", from)
          .Field(type == "agree" ? "agree_time" : "disagree_time", t).EndObject();
    } else if (type == "weapp") {
      j.Key("weapp").BeginObject().Field("title", "报销审批").Field("description", Phrase())
          .Field("username", "gh_1234567890ab@app").Field("displayname", "审批助手").EndObject();
    } else if (type == "qydiskfile") {
      j.Key("info").BeginObject().Field("filename", "共享资料.xlsx").EndObject();
    } else if (type == "meeting_notification") {
      j.Key("info").BeginObject().Field("meeting_id", static_cast<uint64_t>(rng_.Next() >> 2))
          .Field("notification_type", 1).Field("content", "会议即将开始").EndObject();
    }
    j.EndObject();
    recent_msgids_.push_back(msgid);
    if (recent_msgids_.size() > 64) recent_msgids_.erase(recent_msgids_.begin());
    return type;
  }

  Result<Media> ReuseOr(std::string_view ext, uint64_t size) {
    // Forwarded pictures: the same bytes again, stored once by MD5.
    if (!images_.empty() && rng_.Chance(0.1)) return rng_.Pick(images_);
    WXA_ASSIGN_OR_RETURN(Media m, WriteMedia(ext, size, true));
    images_.push_back(m);
    return m;
  }

  // The bad-input cases, one line each.
  Result<std::vector<std::pair<std::string, std::string>>> BrokenRecords(int64_t t) {
    const Conversation& c = convs_.front();
    const std::string& a = c.members[0];
    const std::string& b = c.members[1];
    std::vector<std::pair<std::string, std::string>> v;
    auto id = [&](const char* tag) { return fmt::format("{}-{}-{}", tag, t, rng_.Below(1000000)); };
    v.push_back({"broken:malformed",
                 fmt::format(R"({{"msgid":"{}","action":"send","from":"{}","tolist":["{}"],"msgtime":)", id("malformed"), a, b)});
    v.push_back({"broken:invalid_utf8",
                 fmt::format(R"({{"msgid":"{}","action":"send","from":"{}","tolist":["{}"],"roomid":"","msgtime":{},"msgtype":"text","text":{{"content":"bad bytes {} here"}}}})", id("utf8"), a, b, t, "\xff\xfe")});
    v.push_back({"broken:control_chars",
                 fmt::format("{{\"msgid\":\"{}\",\"action\":\"send\",\"from\":\"{}\",\"tolist\":[\"{}\"],\"roomid\":\"\",\"msgtime\":{},\"msgtype\":\"text\",\"text\":{{\"content\":\"bell\x07 and\x01 tab\"}}}}", id("ctl"), a, b, t)});
    WXA_ASSIGN_OR_RETURN(Media m1, WriteMedia("pdf", 2048, true));
    v.push_back({"broken:numbers_as_strings",
                 fmt::format(R"({{"msgid":"{}","action":"send","from":"{}","tolist":"{}","roomid":"","msgtime":"{}","msgtype":"file","file":{{"md5sum":"{}","filename":"stringly.pdf","fileext":"pdf","filesize":"{}","sdkfileid":"{}"}}}})", id("strings"), a, b, t, m1.md5, m1.size, m1.sdkfileid)});
    v.push_back({"broken:bigint",
                 fmt::format(R"({{"msgid":"{}","action":"send","from":"{}","tolist":["{}"],"roomid":"","msgtime":{},"msgtype":"meeting","meeting":{{"topic":"big id","starttime":{},"endtime":{},"meetingtype":101,"meetingid":123456789012345678901234567890,"status":1}}}})", id("bigint"), a, b, t, t / 1000, t / 1000 + 600)});
    v.push_back({"broken:missing_media",
                 fmt::format(R"({{"msgid":"{}","action":"send","from":"{}","tolist":["{}"],"roomid":"","msgtime":{},"msgtype":"image","image":{{"md5sum":"{}","filesize":1234,"sdkfileid":"missingMEDIA"}}}})", id("missing"), a, b, t, core::ToHex(core::Md5(id("nope"))))});
    WXA_ASSIGN_OR_RETURN(Media m2, WriteMedia("pdf", 4096, true));
    v.push_back({"broken:corrupt_media",
                 fmt::format(R"({{"msgid":"{}","action":"send","from":"{}","tolist":["{}"],"roomid":"","msgtime":{},"msgtype":"file","file":{{"md5sum":"{}","filename":"corrupt.pdf","fileext":"pdf","filesize":{},"sdkfileid":"{}"}}}})", id("corrupt"), a, b, t, m2.md5, m2.size + 100, m2.sdkfileid)});
    WXA_ASSIGN_OR_RETURN(Media m3, WriteMedia("txt", 512, true));
    v.push_back({"broken:path_traversal_name",
                 fmt::format(R"({{"msgid":"{}","action":"send","from":"{}","tolist":["{}"],"roomid":"","msgtime":{},"msgtype":"file","file":{{"md5sum":"{}","filename":"../../etc/passwd","fileext":"","filesize":{},"sdkfileid":"{}"}}}})", id("traversal"), a, b, t, m3.md5, m3.size, m3.sdkfileid)});
    v.push_back({"broken:crlf_name",
                 fmt::format(R"({{"msgid":"{}","action":"send","from":"{}","tolist":["{}"],"roomid":"","msgtime":{},"msgtype":"file","file":{{"md5sum":"{}","filename":"invoice\r\nBcc: victim@evil.example.pdf","fileext":"pdf","filesize":{},"sdkfileid":"{}"}}}})", id("crlfname"), a, b, t, m3.md5, m3.size, m3.sdkfileid)});
    v.push_back({"broken:crlf_header",
                 fmt::format(R"({{"msgid":"{}\r\nBcc: victim@evil.example","action":"send","from":"{}","tolist":["{}"],"roomid":"wrEvil\r\nBcc: victim@evil.example","msgtime":{},"msgtype":"text","text":{{"content":"header injection attempt"}}}})", id("crlfhdr"), a, b, t)});
    v.push_back({"broken:unknown_type",
                 fmt::format(R"({{"msgid":"{}","action":"send","from":"{}","tolist":["{}"],"roomid":"","msgtime":{},"msgtype":"hongbao_v3","hongbao_v3":{{"amount":"8.88","note":"新类型"}}}})", id("unknown"), a, b, t)});
    v.push_back({"broken:switch",
                 fmt::format(R"({{"msgid":"{}","action":"switch","time":{},"user":"{}"}})", id("switch"), t, a)});
    return v;
  }

  Status WriteDay(int d) {
    const int64_t day_start = o_.start_ms + static_cast<int64_t>(d) * 86400000LL;
    const uint64_t n = static_cast<uint64_t>(o_.users * o_.messages_per_user_day);
    std::vector<int64_t> times(n);
    for (auto& t : times) t = day_start + static_cast<int64_t>(rng_.Below(86400000));
    std::sort(times.begin(), times.end());
    std::vector<std::pair<std::string, std::string>> broken;
    if (o_.broken_records) {
      WXA_ASSIGN_OR_RETURN(broken, BrokenRecords(day_start + 43200000));
    }
    std::string out;
    out.reserve(n * 300);
    size_t next_broken = 0;
    for (uint64_t i = 0; i < n; ++i) {
      // Spread the broken records through the day.
      while (next_broken < broken.size() && i >= (next_broken + 1) * n / (broken.size() + 1)) {
        out += broken[next_broken].second + "\n";
        summary_.by_type[broken[next_broken].first]++;
        summary_.records++;
        ++next_broken;
      }
      WXA_ASSIGN_OR_RETURN(std::string type, Record(&out, times[i], seq_++));
      out.push_back('\n');
      summary_.by_type[type]++;
      summary_.records++;
    }
    for (; next_broken < broken.size(); ++next_broken) {
      out += broken[next_broken].second + "\n";
      summary_.by_type[broken[next_broken].first]++;
      summary_.records++;
    }
    if (o_.broken_records && d == o_.days - 1) {
      // An export cut short: the last line stops mid-record, without a newline.
      out += R"({"msgid":"truncated-at-eof","action":"send","from":"x","tolist":["y"],"msgti)";
      summary_.by_type["broken:truncated_last_line"]++;
      summary_.records++;
    }
    summary_.jsonl_bytes += out.size();
    time_t secs = static_cast<time_t>(day_start / 1000);
    struct tm tm {};
    gmtime_r(&secs, &tm);
    return WriteText(fmt::format("chatdata-{:04}{:02}{:02}.jsonl", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday), out);
  }

  const GenOptions& o_;
  Rng rng_;
  core::Env* env_ = core::Env::Default();
  std::string media_dir_;
  std::vector<User> users_;
  std::vector<Conversation> convs_;
  double total_weight_ = 0;
  std::vector<std::string> recent_msgids_;
  std::vector<Media> images_;
  std::vector<Media> files_;
  bool made_huge_ = false;
  uint64_t seq_ = 0;
  GenSummary summary_;
};

}  // namespace

Result<GenSummary> GenerateCorpus(const GenOptions& options) {
  Generator g(options);
  return g.Run();
}

}  // namespace wxa::gen
