// The item size limit (ARCHITECTURE section 6). Microsoft 365 connectors do
// not import items over 10 MB; the default policy does the same, but says so:
// an oversize item is not written and is reported with its size and the limit.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "formats/core/status.h"

namespace wxa::limits {

inline constexpr uint64_t kDefaultMaxItemBytes = 10ull << 20;  // 10 MiB of rendered MIME

enum class OversizePolicy {
  kReject,  // not imported; reported; importable later with a larger limit
  // Imported with its largest attachments replaced, until it fits, by a
  // text part naming the file, its size, its SHA-256 and where the
  // original is kept (the source archive); reported. An item over the
  // limit without them is rejected as by kReject.
  kStub,
  // kSplit (ARCHITECTURE section 6) is not implemented yet.
};

struct SizeLimit {
  uint64_t max_bytes = kDefaultMaxItemBytes;
  OversizePolicy policy = OversizePolicy::kReject;
};

// "10485760", "10MiB", "10M" (MiB), "500k"/"500KiB", "1GiB"; "MB"/"KB" are
// decimal. A clear error for anything else or for 0.
Result<uint64_t> ParseSize(std::string_view text);
Result<OversizePolicy> ParsePolicy(std::string_view text);
const char* PolicyName(OversizePolicy p);

// A human size: "10.0 MiB (10485760 bytes)".
std::string DescribeSize(uint64_t bytes);

// The report reason for an item of `size` bytes that is over the limit;
// `estimated` when the size is a lower bound computed without rendering
// (attachments alone are over the limit: they are never read).
std::string OversizeReason(const SizeLimit& limit, uint64_t size, bool estimated = false);

}  // namespace wxa::limits
