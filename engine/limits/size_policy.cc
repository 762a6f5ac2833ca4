#include "engine/limits/size_policy.h"

#include <fmt/format.h>

#include "formats/core/text.h"

namespace wxa::limits {

Result<uint64_t> ParseSize(std::string_view text) {
  std::string s = core::AsciiLower(core::Trim(text));
  size_t i = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  if (i == 0 || i > 15) return Status::InvalidArgument(fmt::format("'{}' is not a size", text));
  uint64_t n = std::stoull(s.substr(0, i));
  std::string unit(core::Trim(std::string_view(s).substr(i)));
  uint64_t mult;
  if (unit.empty() || unit == "b") mult = 1;
  else if (unit == "k" || unit == "kib") mult = 1ull << 10;
  else if (unit == "m" || unit == "mib") mult = 1ull << 20;
  else if (unit == "g" || unit == "gib") mult = 1ull << 30;
  else if (unit == "kb") mult = 1000;
  else if (unit == "mb") mult = 1000 * 1000;
  else if (unit == "gb") mult = 1000ull * 1000 * 1000;
  else return Status::InvalidArgument(fmt::format("'{}': unknown size unit '{}'", text, unit));
  if (n == 0) return Status::InvalidArgument("a size limit of 0 would reject everything");
  if (n > UINT64_MAX / mult) return Status::InvalidArgument(fmt::format("'{}' is too large", text));
  return n * mult;
}

Result<OversizePolicy> ParsePolicy(std::string_view text) {
  if (text == "reject") return OversizePolicy::kReject;
  if (text == "stub") return OversizePolicy::kStub;
  if (text == "split") {
    return Status::Unsupported(
        fmt::format("oversize policy '{}' is not implemented yet; use 'reject'", text));
  }
  return Status::InvalidArgument(fmt::format("unknown oversize policy '{}'", text));
}

const char* PolicyName(OversizePolicy p) {
  switch (p) {
    case OversizePolicy::kReject: return "reject";
    case OversizePolicy::kStub: return "stub";
  }
  return "?";
}

std::string DescribeSize(uint64_t bytes) {
  if (bytes < (1u << 20)) return fmt::format("{:.1f} KiB ({} bytes)", bytes / 1024.0, bytes);
  return fmt::format("{:.1f} MiB ({} bytes)", bytes / 1048576.0, bytes);
}

std::string OversizeReason(const SizeLimit& limit, uint64_t size, bool estimated) {
  return fmt::format("rendered item {} {}, over the {} limit; policy '{}': not imported{}",
                     estimated ? "would be at least" : "is", DescribeSize(size),
                     DescribeSize(limit.max_bytes), PolicyName(limit.policy),
                     limit.policy == OversizePolicy::kStub ? " (over it even with every attachment stubbed)" : "");
}

}  // namespace wxa::limits
