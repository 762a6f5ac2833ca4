// Item -> RFC 5322 / MIME bytes, with GMime (ARCHITECTURE section 5).
// Deterministic: Message-ID, MIME boundaries, file names and dates derive
// from the item, never from the clock or a random source, so rendering the
// same item twice gives the same bytes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "formats/core/item.h"
#include "formats/core/status.h"

namespace wxa::mime {

// Calls g_mime_init() once per process. Call before starting threads.
void InitGMime();

using core::Person;
using core::SyntheticAddress;

struct RenderInput {
  const core::Item* item = nullptr;  // not owned; must outlive the render
  Person from;
  std::vector<Person> to;
};

// "<32 hex>@wxarchiver" (without angle brackets) for an item key.
std::string MessageIdFor(const core::ItemKey& key);
// The Subject header text (before RFC 2047 encoding).
std::string SubjectFor(const RenderInput& in);
// Content type for an attachment: by extension, then by the first bytes.
std::string GuessContentType(std::string_view extension, std::string_view head);
// The attachment file names Render uses, in order: media with bytes, then the
// raw record when attached.
std::vector<std::string> AttachmentFileNames(const core::Item& item);
// Lower bound of the rendered size: the base64 size of every attachment.
// An item whose bound exceeds a limit is oversize without rendering it.
uint64_t RenderedSizeLowerBound(const core::Item& item);

// Not thread-safe: one per thread; it keeps reusable GMime format options.
class Renderer {
 public:
  Renderer();
  ~Renderer();
  Renderer(const Renderer&) = delete;
  Renderer& operator=(const Renderer&) = delete;

  // The whole message, CRLF line ends.
  Result<std::string> Render(const RenderInput& in);
  // The exact size Render would produce, without keeping the bytes.
  Result<uint64_t> MeasureSize(const RenderInput& in);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace wxa::mime
