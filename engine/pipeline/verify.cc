#include "engine/pipeline/verify.h"

#include <future>
#include <map>
#include <set>
#include <unordered_map>

#include <fmt/format.h>

#include "engine/index/index.h"
#include "formats/core/json_writer.h"
#include "formats/mime/renderer.h"

namespace wxa::pipeline {

Result<VerifyReport> RunVerify(const VerifyOptions& o) {
  if (o.index_dir.empty()) return Status::InvalidArgument("verify needs --index DIR");
  WXA_ASSIGN_OR_RETURN(sinks::Target target, sinks::ParseTarget(o.target));
  index::IndexOptions ro;
  ro.read_only = true;
  WXA_ASSIGN_OR_RETURN(std::unique_ptr<index::Index> idx, index::Index::Open(o.index_dir, ro));
  auto sid = idx->GetMeta("sink/" + target.Canonical());
  if (!sid.ok()) {
    if (sid.status().IsNotFound()) {
      return Status::NotFound(fmt::format("the index at {} has no deliveries to {}", o.index_dir, target.Canonical()));
    }
    return sid.status();
  }
  const auto sink_id = static_cast<uint16_t>(std::strtoul(sid->c_str(), nullptr, 10));
  std::map<std::string, std::set<std::string>> expected;  // mailbox -> Message-IDs done
  WXA_RETURN_IF_ERROR(idx->ForEachDelivery([&](const index::DeliveryKey& k, const index::DeliveryRecord& r) {
    if (k.sink == sink_id && r.state == index::DeliveryState::kDone) {
      expected[k.mailbox].insert(mime::MessageIdFor(k.item));
    }
  }));
  if (!o.make_sink) return Status::InvalidArgument("verify: no sink factory");
  WXA_ASSIGN_OR_RETURN(std::unique_ptr<sinks::Sink> sink, o.make_sink(target));
  WXA_RETURN_IF_ERROR(sink->Open());
  VerifyReport rep;
  rep.target = target.Canonical();
  rep.index_dir = o.index_dir;
  for (const auto& [mb, ids] : expected) {
    MailboxVerify v;
    v.mailbox = mb;
    v.index_done = ids.size();
    std::promise<Result<std::vector<std::string>>> p;
    auto f = p.get_future();
    sink->Inventory(mb, [&p](Result<std::vector<std::string>> r) { p.set_value(std::move(r)); });
    auto got = f.get();
    if (!got.ok()) {
      v.error = got.status().ToString();
      ++rep.errors;
      rep.mailboxes.push_back(std::move(v));
      continue;
    }
    v.target_count = got->size();
    std::unordered_map<std::string, uint32_t> seen;
    for (const auto& id : *got) ++seen[id];
    for (const auto& id : ids) {
      auto it = seen.find(id);
      if (it == seen.end()) {
        ++v.missing_count;
        if (v.missing.size() < o.max_listed) v.missing.push_back(id);
      }
    }
    std::set<std::string> dup_sorted;
    for (const auto& [id, n] : seen) {
      if (ids.count(id) == 0) v.others += n;
      if (n > 1) dup_sorted.insert(id);
    }
    v.duplicated_count = dup_sorted.size();
    for (const auto& id : dup_sorted) {
      if (v.duplicated.size() >= o.max_listed) break;
      v.duplicated.push_back(id);
    }
    rep.missing += v.missing_count;
    rep.duplicated += v.duplicated_count;
    rep.mailboxes.push_back(std::move(v));
  }
  (void)sink->Close();
  return rep;
}

std::string VerifyText(const VerifyReport& r) {
  std::string out = fmt::format("verify           {} against the index {}\n", r.target, r.index_dir);
  for (const auto& m : r.mailboxes) {
    if (!m.error.empty()) {
      out += fmt::format("  {:<40} ERROR {}\n", m.mailbox, m.error);
      continue;
    }
    out += fmt::format("  {:<40} index {:>8} target {:>8}  missing {:>6}  duplicated {:>6}{}\n", m.mailbox,
                       m.index_done, m.target_count, m.missing_count, m.duplicated_count,
                       m.others ? fmt::format("  others {}", m.others) : "");
    for (const auto& id : m.missing) out += fmt::format("    missing    <{}>\n", id);
    for (const auto& id : m.duplicated) out += fmt::format("    duplicated <{}>\n", id);
  }
  out += fmt::format("result           {}: {} missing, {} duplicated, {} mailboxes not checked\n",
                     r.clean() ? "clean" : "PROBLEMS", r.missing, r.duplicated, r.errors);
  return out;
}

std::string VerifyJson(const VerifyReport& r) {
  std::string out;
  core::JsonWriter j(&out);
  j.BeginObject();
  j.Field("target", r.target).Field("index", r.index_dir).Field("clean", r.clean());
  j.Field("missing", r.missing).Field("duplicated", r.duplicated).Field("errors", r.errors);
  j.Key("mailboxes").BeginArray();
  for (const auto& m : r.mailboxes) {
    j.BeginObject().Field("mailbox", m.mailbox).Field("index_done", m.index_done);
    j.Field("target_count", m.target_count).Field("missing_count", m.missing_count);
    j.Field("duplicated_count", m.duplicated_count).Field("others", m.others);
    if (!m.error.empty()) j.Field("error", m.error);
    j.Key("missing").BeginArray();
    for (const auto& id : m.missing) j.String(id);
    j.EndArray().Key("duplicated").BeginArray();
    for (const auto& id : m.duplicated) j.String(id);
    j.EndArray().EndObject();
  }
  j.EndArray().EndObject();
  out += "\n";
  return out;
}

}  // namespace wxa::pipeline
