// RAII for GObjects (GMime objects, streams, data wrappers) and g_malloc'ed
// strings. The only place g_object_unref and g_free appear (STYLE rule 2).
#pragma once

#include <glib-object.h>

#include <memory>
#include <utility>

namespace wxa::mime {

// Owns one reference. Construct from a pointer returned with a new reference
// (g_mime_*_new); use Ref() to take an extra reference on a borrowed pointer.
template <typename T>
class GPtr {
 public:
  GPtr() = default;
  explicit GPtr(T* p) : p_(p) {}
  ~GPtr() { Reset(); }
  GPtr(GPtr&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  GPtr& operator=(GPtr&& o) noexcept {
    if (this != &o) {
      Reset();
      p_ = std::exchange(o.p_, nullptr);
    }
    return *this;
  }
  GPtr(const GPtr&) = delete;
  GPtr& operator=(const GPtr&) = delete;

  static GPtr Ref(T* borrowed) {
    if (borrowed != nullptr) g_object_ref(borrowed);
    return GPtr(borrowed);
  }
  T* get() const { return p_; }
  explicit operator bool() const { return p_ != nullptr; }
  void Reset() {
    if (p_ != nullptr) g_object_unref(p_);
    p_ = nullptr;
  }

 private:
  T* p_ = nullptr;
};

// A g_malloc'ed string (g_free on destruction).
struct GFreeDeleter {
  void operator()(void* p) const { g_free(p); }
};
using GCharPtr = std::unique_ptr<char, GFreeDeleter>;

}  // namespace wxa::mime
