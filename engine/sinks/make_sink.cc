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
    case Target::Kind::kPst: {
      PstSinkOptions o = options.pst;
      o.folder = options.local.folder;
      return MakePstSink(target, std::move(o));
    }
    case Target::Kind::kGraph: {
      GraphOptions o = options.graph;
      o.folder = options.local.folder;
      return MakeGraphSink(target, std::move(o));
    }
  }
  return Status::Unsupported(fmt::format("{} targets are not available yet", TargetKindName(target.kind)));
}

}  // namespace wxa::sinks
