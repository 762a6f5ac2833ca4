#include "formats/mime/renderer.h"

#include "formats/mime/serializer.h"

namespace wxa::mime {

namespace {

// Render() reserves a bound (exact for attachments, up to 3x for text); a
// result holding much more than it needs is trimmed, since the engine keeps
// rendered items in flight until their sink acknowledges them.
constexpr size_t kMaxSlackBytes = 16 << 10;

Status CheckInput(const RenderInput& in) {
  if (in.item == nullptr) return Status::InvalidArgument("render: no item");
  return Status::Ok();
}

}  // namespace

Renderer::Renderer() = default;
Renderer::~Renderer() = default;

Status Renderer::RenderAppend(const RenderInput& in, std::string* out) {
  WXA_RETURN_IF_ERROR(CheckInput(in));
  ComposeInto(in, &composed_);
  out->reserve(out->size() + SerializedSizeBound(composed_));
  SerializeMessage(composed_, out);
  return Status::Ok();
}

Result<std::string> Renderer::Render(const RenderInput& in) {
  std::string out;
  WXA_RETURN_IF_ERROR(RenderAppend(in, &out));
  if (out.capacity() - out.size() > kMaxSlackBytes + out.size() / 4) out.shrink_to_fit();
  return out;
}

Result<uint64_t> Renderer::MeasureSize(const RenderInput& in) {
  scratch_.clear();
  WXA_RETURN_IF_ERROR(RenderAppend(in, &scratch_));
  return static_cast<uint64_t>(scratch_.size());
}

}  // namespace wxa::mime
