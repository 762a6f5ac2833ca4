// Status and Result<T>: the error values every fallible function returns.
// Nothing throws across a module boundary (STYLE rule 1). A Status is cheap to
// copy when OK (no allocation) and carries a code plus a human message otherwise.
#pragma once

#include <cassert>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace wxa::core {

class [[nodiscard]] Status {
 public:
  enum class Code : unsigned char {
    kOk = 0,
    kNotFound,
    kInvalidArgument,  // bad input from a user (flags, CSV, config)
    kCorruption,       // bad data in a file we read (record, media, index)
    kIOError,          // the OS failed us (ENOSPC, EIO, EACCES, ...)
    kUnsupported,      // valid input we do not handle (newer schema, ...)
    kTooLarge,         // over a configured size limit
    kAlreadyExists,
    kAborted,          // cancelled or stopped by a signal / fatal sink error
  };

  Status() = default;
  static Status Ok() { return Status(); }
  static Status NotFound(std::string_view m) { return Status(Code::kNotFound, m); }
  static Status InvalidArgument(std::string_view m) { return Status(Code::kInvalidArgument, m); }
  static Status Corruption(std::string_view m) { return Status(Code::kCorruption, m); }
  static Status IOError(std::string_view m) { return Status(Code::kIOError, m); }
  // An IOError naming the failed call, the path and strerror(err).
  static Status FromErrno(std::string_view what, std::string_view path, int err);
  static Status Unsupported(std::string_view m) { return Status(Code::kUnsupported, m); }
  static Status TooLarge(std::string_view m) { return Status(Code::kTooLarge, m); }
  static Status AlreadyExists(std::string_view m) { return Status(Code::kAlreadyExists, m); }
  static Status Aborted(std::string_view m) { return Status(Code::kAborted, m); }

  bool ok() const { return rep_ == nullptr; }
  Code code() const { return rep_ ? rep_->code : Code::kOk; }
  bool IsNotFound() const { return code() == Code::kNotFound; }
  bool IsIOError() const { return code() == Code::kIOError; }
  bool IsCorruption() const { return code() == Code::kCorruption; }
  // The OS error number behind an IOError made by FromErrno, else 0.
  int os_errno() const { return rep_ ? rep_->err : 0; }
  // Only the message, without the code name.
  const std::string& message() const;
  // "<code name>: <message>", or "OK".
  std::string ToString() const;
  // A copy whose message is "<context>: <message>".
  Status WithContext(std::string_view context) const;

 private:
  struct Rep {
    Code code;
    int err;
    std::string msg;
  };
  Status(Code c, std::string_view m, int err = 0)
      : rep_(std::make_shared<const Rep>(Rep{c, err, std::string(m)})) {}
  std::shared_ptr<const Rep> rep_;  // null means OK
};

const char* CodeName(Status::Code c);

// A value or the Status saying why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status s) : v_(std::move(s)) { assert(!std::get<Status>(v_).ok()); }  // NOLINT

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace wxa::core

namespace wxa {
// Every module uses these unqualified.
using core::Result;
using core::Status;
}  // namespace wxa

// Error plumbing in one line (zstd's FORWARD_IF_ERROR idea).
#define WXA_RETURN_IF_ERROR(expr)                 \
  do {                                            \
    ::wxa::core::Status wxa_status_ = (expr);     \
    if (!wxa_status_.ok()) return wxa_status_;    \
  } while (0)

#define WXA_CONCAT_INNER(a, b) a##b
#define WXA_CONCAT(a, b) WXA_CONCAT_INNER(a, b)
#define WXA_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
// WXA_ASSIGN_OR_RETURN(auto x, MakeX()); returns the Status when MakeX fails.
#define WXA_ASSIGN_OR_RETURN(lhs, expr) \
  WXA_ASSIGN_OR_RETURN_IMPL(WXA_CONCAT(wxa_result_, __LINE__), lhs, expr)
