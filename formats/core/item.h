// The item model: one archived communication (chat message, media, file, call,
// recall, or a record of a type we do not know), independent of the source
// format and of how it is rendered. Sources (formats/wecom) fill it; the
// renderer (formats/mime) reads it; the engine adds mailboxes and outcomes.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace wxa::core {

// 16 bytes of SHA-256 over (source kind, corp id, msgid): the identity of an
// item everywhere (index key, Message-ID, file names, MIME boundaries).
struct ItemKey {
  std::array<unsigned char, 16> bytes{};

  static ItemKey For(std::string_view source_kind, std::string_view corp, std::string_view msgid);
  std::string Hex() const;  // 32 lowercase hex digits
  std::string_view View() const {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }
  bool operator==(const ItemKey&) const = default;
  auto operator<=>(const ItemKey&) const = default;
};

// Where a record came from: enough to find it again and to resume after it.
struct SourcePos {
  std::string file;      // path relative to the source directory
  uint64_t offset = 0;   // byte offset of the record's first byte
  uint64_t line = 0;     // 1-based line number
};

enum class ItemKind : uint8_t {
  kChat,     // text-like messages: text, markdown, link, card, vote, ...
  kMedia,    // image, voice, video, emotion
  kFile,     // file, qydiskfile, shared documents
  kCall,     // voiptext, meeting_voice_call, voip_doc_share, meeting
  kRecall,   // action=recall / msgtype=revoke
  kUnknown,  // a msgtype we do not know: rendered generically, raw record attached
};
const char* ItemKindName(ItemKind k);

enum class MediaState : uint8_t {
  kUnresolved,  // not looked up yet
  kFound,       // a regular file is there (size known); its bytes are not read yet
  kOk,          // bytes read, and they match the record
  kMissing,     // no bytes (absent, refused, unreadable, or no usable name)
  kCorrupt,     // bytes read, but size or MD5 differ from the record (or the file
                // changed while read); attached as read, with a note
};

// A binary payload stored beside the records (media/), referenced by the record.
struct MediaRef {
  std::string role;          // "image", "voice", "video", "file", "emotion", "recording", ...
  std::string sdkfileid;
  std::string md5sum;        // lowercase hex as given by the record; may be empty
  std::optional<uint64_t> declared_size;
  std::string filename;      // as given by the record (unsanitized); may be empty
  std::string extension;     // without the dot, lowercase; may be empty
  // Filled by the media store:
  MediaState state = MediaState::kUnresolved;
  std::string path;          // where the bytes are, relative to the source ("media/<name>")
  uint64_t size = 0;         // the file's size when found; the size of `bytes` once read
  std::string bytes;         // the bytes read (kOk, kCorrupt): exactly what goes into the item
  std::string problem;       // what is wrong (kMissing, kCorrupt), or what a stub replaced; empty otherwise
  bool stubbed = false;      // oversize policy stub: `bytes` are the stub text, not the file
  bool has_bytes() const { return state == MediaState::kOk || state == MediaState::kCorrupt; }
  bool found() const { return state == MediaState::kFound || has_bytes(); }
};

// A labelled fact of the payload shown in the body (title, URL, address, ...).
struct Fact {
  std::string label;
  std::string value;
};

// One entry of a forwarded chat history (chatrecord) or of a mixed message.
struct Entry {
  std::string type;                 // e.g. "ChatRecordText", "image"
  std::optional<int64_t> time_s;    // seconds since epoch, when given
  std::string text;                 // what the entry says, rendered as text
};

struct CallInfo {
  std::string call_type;            // e.g. "voice call (1:1)", "meeting recording"
  std::optional<int64_t> duration_s;
  std::optional<int64_t> start_s;
  std::optional<int64_t> end_s;
};

// A participant as shown in headers and recipient tables.
struct Person {
  std::string id;       // WeCom id (X-WeChat-From / X-WeChat-To)
  std::string name;     // display name; the id when unknown
  std::string address;  // mapped mailbox, directory e-mail, or SyntheticAddress(id)
};

// The people of an item: its sender and the others (without repeats).
struct Participants {
  Person from;
  std::vector<Person> to;
};

// An address that never routes, for participants without one:
// "<id>@wecom.invalid" with unsafe characters of the id replaced.
std::string SyntheticAddress(std::string_view id);

struct Item {
  ItemKey key;
  std::string source_kind = "wecom";
  // Envelope, as in the record.
  std::string msgid;
  std::string action;                // send / recall
  std::string msgtype;
  std::string from;                  // participant id
  std::vector<std::string> to;       // participant ids, in record order
  std::string roomid;                // empty for 1:1
  int64_t msgtime_ms = 0;
  // Content, normalized.
  ItemKind kind = ItemKind::kChat;
  std::string label;                 // short descriptor for subjects: "image", "file report.pdf"
  std::string text;                  // the main text of the message, may be empty
  std::vector<Fact> facts;
  std::vector<Entry> entries;
  std::vector<MediaRef> media;
  std::optional<CallInfo> call;
  std::string recalled_msgid;        // for kRecall
  std::optional<ItemKey> recalled_key;  // key of the recalled item (same source and corp)
  std::vector<std::string> notes;    // what the parser had to repair or could not use
  std::string raw;                   // the record line as read (for generic rendering)
  // 16 bytes of SHA-256 over what the record says (not how it is written):
  // two exports of one message hash alike however their JSON is formatted;
  // a record that reuses a msgid for other content does not.
  std::string record_hash;
  bool attach_raw = false;           // attach `raw` as a part (unknown or repaired records)
  SourcePos pos;

  bool is_group() const { return !roomid.empty(); }
  // from + to, de-duplicated, in order of first appearance.
  std::vector<std::string> Participants() const;
};

}  // namespace wxa::core
