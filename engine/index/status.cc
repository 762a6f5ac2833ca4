#include "engine/index/status.h"

#include <fmt/format.h>

#include "formats/core/json_writer.h"

namespace wxa::index {

namespace {
uint64_t Item(const IndexStats& s, ItemState st) { return s.items_by_state[static_cast<int>(st)]; }
uint64_t Delivery(const IndexStats& s, DeliveryState st) {
  return s.deliveries_by_state[static_cast<int>(st)];
}
std::string CursorSink(const std::string& key) { return key.substr(0, key.find('/')); }
std::string CursorFile(const std::string& key) {
  size_t slash = key.find('/');
  return slash == std::string::npos ? key : key.substr(slash + 1);
}
}  // namespace

std::string StatusText(const std::string& dir, const IndexStats& s) {
  std::string out;
  out += fmt::format("index            {} (schema {}, corp '{}')\n", dir, s.schema_version, s.corp);
  out += fmt::format("items            {} done, {} unmapped, {} rejected (oversize), {} failed\n",
       Item(s, ItemState::kDone), Item(s, ItemState::kUnmapped), Item(s, ItemState::kRejected),
       Item(s, ItemState::kFailed));
  out += fmt::format("deliveries       {} done, {} in doubt, {} failed\n", Delivery(s, DeliveryState::kDone),
       Delivery(s, DeliveryState::kIntent), Delivery(s, DeliveryState::kFailed));
  if (s.run_active) {
    out += fmt::format("run              a run is using this index now; its {} in-doubt deliveries are being "
                       "written\n", s.pending);
  } else if (s.pending > 0) {
    out += fmt::format("in doubt         {} deliveries were being written when a run stopped; the next run "
                       "settles them\n", s.pending);
  }
  out += fmt::format("size             {:.1f} MB on disk, {:.1f} MB used, map {:.0f} MB\n",
       s.data_file_bytes / 1e6, s.used_bytes / 1e6, s.map_size / 1e6);
  for (const auto& k : s.sinks) out += fmt::format("target #{}        {}\n", k.id, k.target);
  if (!s.files.empty()) {
    out += fmt::format("cursors\n");
    for (const auto& f : s.files) {
      out += fmt::format("  #{} {:<32} offset {:>12}  line {:>9}\n", CursorSink(f.name), CursorFile(f.name),
           f.cursor.offset, f.cursor.line);
    }
  }
  if (!s.mailboxes.empty()) {
    out += fmt::format("mailboxes        {}\n", s.mailboxes.size());
    for (const auto& m : s.mailboxes) {
      out += fmt::format("  {:<40} {:>9} done{}{}\n", m.address, m.done,
           m.intent ? fmt::format(", {} in doubt", m.intent) : "",
           m.failed ? fmt::format(", {} failed", m.failed) : "");
    }
  }
  return out;
}

std::string StatusJson(const std::string& dir, const IndexStats& s) {
  std::string out;
  core::JsonWriter j(&out);
  j.BeginObject();
  j.Field("index", dir).Field("schema_version", static_cast<uint64_t>(s.schema_version)).Field("corp", s.corp);
  j.Key("items").BeginObject();
  for (ItemState st : {ItemState::kDone, ItemState::kUnmapped, ItemState::kRejected, ItemState::kFailed}) {
    j.Field(ItemStateName(st), Item(s, st));
  }
  j.EndObject();
  j.Key("deliveries").BeginObject();
  for (DeliveryState st : {DeliveryState::kIntent, DeliveryState::kDone, DeliveryState::kFailed}) {
    j.Field(DeliveryStateName(st), Delivery(s, st));
  }
  j.EndObject();
  j.Field("in_doubt", s.pending);
  j.Field("run_active", s.run_active);
  j.Key("counters").BeginObject();
  j.Field("items_done", s.counters.items[static_cast<int>(ItemState::kDone)]);
  j.Field("deliveries_done", s.counters.deliveries[static_cast<int>(DeliveryState::kDone)]);
  j.Field("deliveries_intent", s.counters.deliveries[static_cast<int>(DeliveryState::kIntent)]);
  j.EndObject();
  j.Key("size").BeginObject().Field("data_file_bytes", s.data_file_bytes).Field("used_bytes", s.used_bytes)
      .Field("map_size", s.map_size).EndObject();
  j.Key("targets").BeginArray();
  for (const auto& k : s.sinks) j.BeginObject().Field("id", static_cast<uint64_t>(k.id)).Field("target", k.target).EndObject();
  j.EndArray();
  j.Key("cursors").BeginArray();
  for (const auto& f : s.files) {
    j.BeginObject().Field("target", CursorSink(f.name)).Field("file", CursorFile(f.name))
        .Field("offset", f.cursor.offset).Field("line", f.cursor.line).EndObject();
  }
  j.EndArray();
  j.Key("mailboxes").BeginArray();
  for (const auto& m : s.mailboxes) {
    j.BeginObject().Field("address", m.address).Field("done", m.done).Field("in_doubt", m.intent)
        .Field("failed", m.failed).EndObject();
  }
  j.EndArray();
  j.EndObject();
  out.push_back('\n');
  return out;
}

}  // namespace wxa::index
