#include "formats/core/status.h"

#include <cstring>

#include <fmt/format.h>

namespace wxa::core {

const char* CodeName(Status::Code c) {
  switch (c) {
    case Status::Code::kOk: return "OK";
    case Status::Code::kNotFound: return "not found";
    case Status::Code::kInvalidArgument: return "invalid argument";
    case Status::Code::kCorruption: return "corruption";
    case Status::Code::kIOError: return "I/O error";
    case Status::Code::kUnsupported: return "unsupported";
    case Status::Code::kTooLarge: return "too large";
    case Status::Code::kAlreadyExists: return "already exists";
    case Status::Code::kAborted: return "aborted";
  }
  return "unknown";
}

Status Status::FromErrno(std::string_view what, std::string_view path, int err) {
  return Status(Code::kIOError, fmt::format("{} {}: {}", what, path, std::strerror(err)), err);
}

const std::string& Status::message() const {
  static const std::string kEmpty;
  return rep_ ? rep_->msg : kEmpty;
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  return fmt::format("{}: {}", CodeName(rep_->code), rep_->msg);
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  return Status(rep_->code, fmt::format("{}: {}", context, rep_->msg), rep_->err);
}

}  // namespace wxa::core
