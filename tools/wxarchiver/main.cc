// wxarchiver: the command line. Flags and wiring only; the work is in engine/.
#include <csignal>
#include <cstdio>
#include <unistd.h>

#include <atomic>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "engine/index/index.h"
#include "engine/index/status.h"
#include "engine/limits/size_policy.h"
#include "engine/pipeline/import.h"
#include "formats/mime/renderer.h"
#include "tools/gen/corpus_gen.h"

namespace {

std::atomic<bool> g_stop{false};

void OnSignal(int) {
  // Second Ctrl-C: leave at once (the index and output stay consistent anyway).
  if (g_stop.exchange(true)) _exit(130);
}

std::string Thousands(uint64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

std::string Mb(uint64_t bytes) { return fmt::format("{:.1f} MB", bytes / 1e6); }

void PrintSummary(const wxa::pipeline::ImportOptions& o, const wxa::pipeline::ImportSummary& s) {
  const auto& c = s.counts;
  double secs = std::max(s.elapsed_s, 1e-6);
  std::string state = !s.fatal.ok() ? "STOPPED by an error" : s.interrupted ? "interrupted" : "done";
  fmt::print("wxarchiver import: {} in {:.1f} s ({} threads)\n", state, s.elapsed_s, s.threads);
  fmt::print("  source           {} file{}, {} records, {}\n", s.source_files,
             s.source_files == 1 ? "" : "s", Thousands(c.records), Mb(c.source_bytes));
  if (c.records == 0 && s.index.files_complete == s.source_files && s.source_files > 0) {
    fmt::print("  nothing new      every source file was read to the end by earlier runs\n");
  }
  fmt::print("  items            {}  ({:.0f} items/s)\n", Thousands(c.items), c.items / secs);
  fmt::print("  imported         {} items as {} deliveries to {} mailboxes, {} ({:.1f} MB/s)\n",
             Thousands(c.imported), Thousands(c.deliveries), s.mailboxes_touched, Mb(c.bytes_written),
             c.bytes_written / 1e6 / secs);
  if (c.already_present > 0 || c.deliveries_present > 0) {
    fmt::print("  already present  {} items ({} deliveries skipped)\n", Thousands(c.already_present),
               Thousands(c.deliveries_present));
  }
  fmt::print("  not imported     {} unmapped, {} oversize (> {}), {} malformed, {} failed\n",
             Thousands(c.unmapped), Thousands(c.oversize), wxa::limits::DescribeSize(o.limit.max_bytes),
             Thousands(c.malformed), Thousands(c.failed));
  fmt::print("  warnings         {} missing media, {} corrupt media, {} repaired, {} unknown type, "
             "{} switch records, {} input CSV rows unused\n",
             Thousands(c.missing_media), Thousands(c.corrupt_media), Thousands(c.repaired),
             Thousands(c.unknown_type), Thousands(c.switches), Thousands(c.input_issues));
  if (!s.unmapped_participants.empty()) {
    fmt::print("  unmapped people  {} participant ids without a mailbox (listed in the report)\n",
               Thousands(s.unmapped_participants.size()));
  }
  const auto& x = s.index;
  if (x.settled_done + x.settled_redo > 0) {
    fmt::print("  settled          {} deliveries a stopped run left in doubt: {} found complete, "
               "{} written again\n",
               x.settled_done + x.settled_redo, x.settled_done, x.settled_redo);
  }
  if (!x.rescan_reason.empty()) fmt::print("  rescan           every record read again: {}\n", x.rescan_reason);
  if (x.files_complete + x.files_resumed + x.files_restarted > 0) {
    fmt::print("  resume           {} files already complete, {} continued from their cursor, "
               "{} read again (changed)\n",
               x.files_complete, x.files_resumed, x.files_restarted);
  }
  fmt::print("  index            {} items done, {} deliveries done, {} unmapped, {} rejected ({})\n",
             Thousands(x.items_done), Thousands(x.deliveries_done), Thousands(x.items_unmapped),
             Thousands(x.items_rejected), x.dir);
  if (!s.report_path.empty()) fmt::print("  report           {}\n", s.report_path);
  if (!s.fatal.ok()) fmt::print(stderr, "error: {}\n", s.fatal.ToString());
  if (s.interrupted) fmt::print("  rerun the same command to continue.\n");
}

int RunImportCommand(wxa::pipeline::ImportOptions& o, const std::string& max_size,
                     const std::string& policy, bool quiet) {
  auto size = wxa::limits::ParseSize(max_size);
  if (!size.ok()) {
    fmt::print(stderr, "error: --max-item-size: {}\n", size.status().message());
    return 2;
  }
  o.limit.max_bytes = *size;
  auto pol = wxa::limits::ParsePolicy(policy);
  if (!pol.ok()) {
    fmt::print(stderr, "error: --oversize: {}\n", pol.status().message());
    return 2;
  }
  o.limit.policy = *pol;
  o.stop = &g_stop;
  const bool tty = isatty(STDERR_FILENO) != 0 && !quiet;
  if (tty) {
    o.on_progress = [](const wxa::pipeline::Counts& c, double elapsed) {
      fmt::print(stderr, "\r  {} records, {} imported, {} deliveries, {:.0f} items/s, {:.1f} MB/s   ",
                 Thousands(c.records), Thousands(c.imported), Thousands(c.deliveries),
                 c.items / std::max(elapsed, 1e-6), c.bytes_written / 1e6 / std::max(elapsed, 1e-6));
    };
  }
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  wxa::mime::InitGMime();  // once, before the pipeline's threads start
  auto result = wxa::pipeline::RunImport(o);
  if (tty) fmt::print(stderr, "\r{:80}\r", "");
  if (!result.ok()) {
    fmt::print(stderr, "error: {}\n", result.status().message());
    return 1;
  }
  if (!quiet) PrintSummary(o, *result);
  if (!result->fatal.ok()) {
    if (quiet) fmt::print(stderr, "error: {}\n", result->fatal.ToString());
    return 1;
  }
  return result->interrupted ? 130 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"wxarchiver: archive WeChat/WeCom communications into mailboxes"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "wxarchiver 0.1.0");

  wxa::pipeline::ImportOptions io;
  std::string max_size = "10MiB";
  std::string policy = "reject";
  bool quiet = false;
  auto* imp = app.add_subcommand("import", "import a WeCom archive export into mailboxes");
  imp->add_option("--source", io.source_dir, "directory with *.jsonl records and media/")->required();
  imp->add_option("--directory", io.directory_csv, "user directory CSV: userid,name,mobile,email")->required();
  imp->add_option("--mapping", io.mapping_csv, "custom mapping CSV: mobile,mailbox (looked at first)");
  imp->add_option("--mailboxes", io.mailboxes_file, "file listing the valid mailboxes, one per line");
  imp->add_option("--to", io.target, "target: maildir:DIR or eml:DIR")->required();
  imp->add_option("--report", io.report_path, "write the JSON run report here");
  imp->add_option("--max-item-size", max_size, "largest rendered item imported (default 10MiB)");
  imp->add_option("--oversize", policy, "policy for larger items: reject (default)");
  imp->add_option("--folder", io.folder, "folder in each mailbox (default 'WeChat Archiver')");
  imp->add_option("--corp", io.corp, "corp id; part of every item's identity (default 'default')");
  imp->add_option("--default-region", io.default_region,
                  "region for phone numbers without a country code (default CN)");
  imp->add_option("--threads", io.threads, "worker threads (default: all cores)");
  imp->add_option("--index", io.index_dir, "LMDB index directory (default: <target dir>/.wxarchiver)");
  imp->add_flag("--rescan", io.rescan, "read every record again, ignoring the cursors");
  std::string sync_mode = "batch";
  imp->add_option("--sync", sync_mode,
                  "durability of written items: batch (syncfs per batch, default) or file (fsync per item)");
  imp->add_flag("--quiet", quiet, "no progress line and no summary");

  std::string status_index, status_target;
  bool status_json = false;
  auto* st = app.add_subcommand("status", "what the index says: counts, in-doubt deliveries, cursors");
  auto* st_index = st->add_option("--index", status_index, "index directory");
  st->add_option("--to", status_target, "the import target (its default index)")->excludes(st_index);
  st->add_flag("--json", status_json, "JSON for scripts");

  wxa::gen::GenOptions go;
  bool clean = false;
  auto* gen = app.add_subcommand("gen", "generate a synthetic WeCom archive corpus");
  gen->add_option("--out", go.out, "output directory")->required();
  gen->add_option("--users", go.users, "employees in the directory")->capture_default_str();
  gen->add_option("--days", go.days, "days of messages, one .jsonl file per day")->capture_default_str();
  gen->add_option("--seed", go.seed, "random seed")->capture_default_str();
  gen->add_option("--media-scale", go.media_scale, "multiplies media sizes")->capture_default_str();
  gen->add_option("--rate", go.messages_per_user_day, "messages per user per day")->capture_default_str();
  gen->add_flag("--clean", clean, "no broken records and no files over 10 MiB");

  CLI11_PARSE(app, argc, argv);

  if (imp->parsed()) {
    auto mode = wxa::sinks::ParseSyncMode(sync_mode);
    if (!mode.ok()) {
      fmt::print(stderr, "error: --sync: {}\n", mode.status().message());
      return 2;
    }
    io.sync_mode = *mode;
    return RunImportCommand(io, max_size, policy, quiet);
  }
  if (st->parsed()) {
    if (status_index.empty() && status_target.empty()) {
      fmt::print(stderr, "error: status needs --index DIR or --to TARGET\n");
      return 2;
    }
    std::string dir = !status_index.empty() ? status_index : wxa::index::DefaultIndexDir(status_target);
    wxa::index::IndexOptions ro;
    ro.read_only = true;
    auto idx = wxa::index::Index::Open(dir, ro);
    if (!idx.ok()) {
      fmt::print(stderr, "error: {}\n", idx.status().message());
      return 1;
    }
    auto stats = (*idx)->Stats();
    if (!stats.ok()) {
      fmt::print(stderr, "error: {}\n", stats.status().message());
      return 1;
    }
    fmt::print("{}", status_json ? wxa::index::StatusJson(dir, *stats) : wxa::index::StatusText(dir, *stats));
    return 0;
  }
  if (gen->parsed()) {
    go.broken_records = go.huge_files = !clean;
    auto r = wxa::gen::GenerateCorpus(go);
    if (!r.ok()) {
      fmt::print(stderr, "error: {}\n", r.status().message());
      return 1;
    }
    fmt::print("generated {} records ({:.1f} MB of JSON lines), {} media files ({:.1f} MB) in {}\n",
               r->records, r->jsonl_bytes / 1e6, r->media_files, r->media_bytes / 1e6, go.out);
    return 0;
  }
  return 2;
}
