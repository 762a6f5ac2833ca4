// Turns one decrypted WeCom session-archive record (a JSON line) into an Item.
// Lenient by design (ARCHITECTURE section 3): numbers given as strings, ids
// beyond int64, raw control characters, invalid UTF-8 and the known payload
// key quirks are all accepted; what had to be repaired is noted on the item.
// Only a line that is not JSON at all, or has no msgid, is malformed.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "formats/core/item.h"
#include "formats/core/status.h"
#include "formats/wecom/record_reader.h"

namespace wxa::wecom {

// action=switch: a user switched enterprise. Not a message; reported only.
struct SwitchRecord {
  std::string msgid;
  int64_t time_ms = 0;
  std::string user;
};

struct Parsed {
  enum class Kind { kItem, kSwitch };
  Kind kind = Kind::kItem;
  core::Item item;      // when kItem
  SwitchRecord sw;      // when kSwitch
};

struct ParseOptions {
  std::string corp = "default";  // enters the item key: keep it stable across runs
};

// Not thread-safe: one per thread (it owns reusable parser buffers).
class RecordParser {
 public:
  explicit RecordParser(ParseOptions options);
  ~RecordParser();
  RecordParser(const RecordParser&) = delete;
  RecordParser& operator=(const RecordParser&) = delete;

  // `file` names the source file for SourcePos. A malformed record gives a
  // Corruption status whose message says what is wrong with it.
  Result<Parsed> Parse(const RawRecord& record, std::string_view file);
  // Convenience for tests and tools: parses a line given as text.
  Result<Parsed> ParseLine(std::string_view line);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// msgtypes this parser renders specifically (everything else is generic).
bool IsKnownMsgType(std::string_view msgtype);

}  // namespace wxa::wecom
