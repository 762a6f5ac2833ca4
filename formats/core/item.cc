#include "formats/core/item.h"

#include <algorithm>
#include <cstring>

#include "formats/core/hash.h"

namespace wxa::core {

ItemKey ItemKey::For(std::string_view source_kind, std::string_view corp, std::string_view msgid) {
  // NUL separators keep ("ab","c") and ("a","bc") apart.
  std::string buf;
  buf.reserve(source_kind.size() + corp.size() + msgid.size() + 2);
  buf.append(source_kind).push_back('\0');
  buf.append(corp).push_back('\0');
  buf.append(msgid);
  Sha256Digest d = Sha256(buf);
  ItemKey k;
  std::memcpy(k.bytes.data(), d.data(), k.bytes.size());
  return k;
}

std::string ItemKey::Hex() const { return ToHex(bytes); }

std::string SyntheticAddress(std::string_view id) {
  std::string local;
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_';
    local.push_back(ok ? c : (c == '.' ? '.' : '_'));
  }
  // At most 64 bytes (RFC 5321), then no leading, trailing or doubled dots
  // in the dot-atom (cutting first could leave a trailing dot: the fuzzer
  // found one, tests/fuzz/crashers/fuzz_render_roundtrip).
  for (size_t i; (i = local.find("..")) != std::string::npos;) local.erase(i, 1);
  if (local.size() > 64) local.resize(64);
  while (!local.empty() && local.front() == '.') local.erase(0, 1);
  while (!local.empty() && local.back() == '.') local.pop_back();
  if (local.empty()) local = "unknown";
  return local + "@wecom.invalid";
}

const char* ItemKindName(ItemKind k) {
  switch (k) {
    case ItemKind::kChat: return "chat";
    case ItemKind::kMedia: return "media";
    case ItemKind::kFile: return "file";
    case ItemKind::kCall: return "call";
    case ItemKind::kRecall: return "recall";
    case ItemKind::kUnknown: return "unknown";
  }
  return "unknown";
}

std::vector<std::string> Item::Participants() const {
  std::vector<std::string> out;
  out.reserve(to.size() + 1);
  auto add = [&](const std::string& id) {
    if (!id.empty() && std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
  };
  add(from);
  for (const auto& t : to) add(t);
  return out;
}

}  // namespace wxa::core
