#include "engine/sinks/make_sink.h"

#include <fmt/format.h>

namespace wxa::sinks {

Result<std::unique_ptr<Sink>> MakeSink(const Target& target, const SinkOptions& options) {
  switch (target.kind) {
    case Target::Kind::kMaildir:
    case Target::Kind::kEml:
    case Target::Kind::kNull:
      return MakeLocalSink(target, options.local);
    case Target::Kind::kImap:
    case Target::Kind::kImaps: {
      ImapOptions o = options.imap;
      o.folder = options.local.folder;
      return MakeImapSink(target, std::move(o));
    }
    case Target::Kind::kPst:
    case Target::Kind::kGraph:
      break;
  }
  return Status::Unsupported(fmt::format("{} targets are not available yet", TargetKindName(target.kind)));
}

}  // namespace wxa::sinks
