// Item -> RFC 5322 / MIME bytes (ARCHITECTURE section 5): Compose (pure,
// compose.h), then the direct serializer (serializer.h). No GMime object is
// built on this path; GMime stays the reference the tests parse with.
// Deterministic: Message-ID, MIME boundaries, file names and dates derive
// from the item, never from the clock or a random source, so rendering the
// same item twice gives the same bytes.
#pragma once

#include <cstdint>
#include <string>

#include "formats/core/item.h"
#include "formats/core/status.h"
#include "formats/mime/compose.h"

namespace wxa::mime {

// Calls g_mime_init() once per process. Call before starting threads. The
// renderer no longer needs it; the GMime reference (gmime_reference.h) does.
void InitGMime();

// Not thread-safe: one per thread; it keeps the composed item's storage for
// reuse.
class Renderer {
 public:
  Renderer();
  ~Renderer();
  Renderer(const Renderer&) = delete;
  Renderer& operator=(const Renderer&) = delete;

  // The whole message, CRLF line ends.
  Result<std::string> Render(const RenderInput& in);
  // Appends the whole message to *out (not cleared), so a caller can reuse
  // one buffer for every item.
  Status RenderAppend(const RenderInput& in, std::string* out);
  // The exact size Render would produce (renders into a reused buffer).
  Result<uint64_t> MeasureSize(const RenderInput& in);
  // The item the last successful render composed; valid until the next
  // call, and while the input item lives unchanged (attachment bytes point
  // into it).
  const ComposedItem& composed() const { return composed_; }

 private:
  ComposedItem composed_;
  std::string scratch_;  // MeasureSize's buffer
};

}  // namespace wxa::mime
