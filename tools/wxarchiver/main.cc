// wxarchiver: the command line. Flags and wiring only; the work is in engine/.
// Exit codes: 0 done; 1 could not start, or stopped on a fatal error; 2 bad
// flags (nothing touched); 3 verify found problems; 75 (EX_TEMPFAIL) stopped
// by a transient condition worth a rerun (the target went away); 130
// interrupted (rerun to continue).
#include <csignal>
#include <cstdio>
#include <unistd.h>

#include <atomic>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "engine/index/index.h"
#include "engine/index/status.h"
#include "engine/limits/size_policy.h"
#include "engine/pipeline/import.h"
#include "engine/pipeline/verify.h"
#include "engine/sinks/make_sink.h"
#include "formats/core/file.h"
#include "formats/maildir/maildir_writer.h"
#include "formats/mime/renderer.h"
#include "tools/gen/corpus_gen.h"

namespace {

constexpr int kExitFatal = 1;
constexpr int kExitUsage = 2;
constexpr int kExitVerifyProblems = 3;
constexpr int kExitTempFail = 75;
constexpr int kExitInterrupted = 130;

std::atomic<bool> g_stop{false};

void OnSignal(int) {
  // Second Ctrl-C: leave at once (the index and output stay consistent anyway).
  if (g_stop.exchange(true)) _exit(kExitInterrupted);
}

std::string Thousands(uint64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

std::string Mb(uint64_t bytes) { return fmt::format("{:.1f} MB", bytes / 1e6); }

std::string Hms(double secs) {
  auto s = static_cast<uint64_t>(secs < 0 ? 0 : secs);
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                   : fmt::format("{}:{:02}", s / 60, s % 60);
}

void PrintSummary(const wxa::pipeline::ImportOptions& o, const wxa::pipeline::ImportSummary& s) {
  const auto& c = s.counts;
  double secs = std::max(s.elapsed_s, 1e-6);
  std::string state = !s.fatal.ok() ? "STOPPED by an error" : s.interrupted ? "interrupted" : "done";
  fmt::print("wxarchiver import: {} in {:.1f} s ({} threads, target {})\n", state, s.elapsed_s, s.threads,
             s.target_kind);
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
  fmt::print("  not imported     {} unmapped, {} oversize (> {}), {} malformed, {} failed, {} conflicts\n",
             Thousands(c.unmapped), Thousands(c.oversize), wxa::limits::DescribeSize(o.limit.max_bytes),
             Thousands(c.malformed), Thousands(c.failed), Thousands(c.conflicts));
  if (c.deliveries_failed > 0 || c.retries > 0) {
    fmt::print("  deliveries       {} failed (retried by the next run), {} retries during this run\n",
               Thousands(c.deliveries_failed), Thousands(c.retries));
  }
  for (const auto& [mb, why] : s.mailboxes_failed) fmt::print("  mailbox stopped  {}: {}\n", mb, why);
  fmt::print("  warnings         {} missing media, {} corrupt media, {} repaired, {} unknown type, "
             "{} switch records, {} input issues{}\n",
             Thousands(c.missing_media), Thousands(c.corrupt_media), Thousands(c.repaired),
             Thousands(c.unknown_type), Thousands(c.switches), Thousands(c.input_issues),
             c.stubbed > 0 ? fmt::format(", {} items with stubs", Thousands(c.stubbed)) : std::string());
  if (!s.unmapped_participants.empty()) {
    fmt::print("  unmapped people  {} participant ids without a mailbox (listed in the report)\n",
               Thousands(s.unmapped_participants.size()));
  }
  const auto& x = s.index;
  if (x.settled_done + x.settled_redo + x.settled_unknown > 0) {
    fmt::print("  settled          {} deliveries a stopped run left in doubt: {} found in the target, "
               "{} written again, {} could not be checked\n",
               x.settled_done + x.settled_redo + x.settled_unknown, x.settled_done, x.settled_redo,
               x.settled_unknown);
  }
  if (!x.rescan_reason.empty()) fmt::print("  rescan           every record read again: {}\n", x.rescan_reason);
  if (x.files_complete + x.files_resumed + x.files_restarted > 0) {
    fmt::print("  resume           {} files already complete, {} continued from their cursor, "
               "{} read again (changed)\n",
               x.files_complete, x.files_resumed, x.files_restarted);
  }
  fmt::print("  index            {} items done, {} deliveries done, {} failed, {} unmapped, {} rejected ({})\n",
             Thousands(x.items_done), Thousands(x.deliveries_done), Thousands(x.deliveries_failed),
             Thousands(x.items_unmapped), Thousands(x.items_rejected), x.dir);
  if (!s.report_path.empty()) fmt::print("  report           {}\n", s.report_path);
  if (!s.fatal.ok()) fmt::print(stderr, "error: {}\n", s.fatal.ToString());
  if (s.interrupted || !s.fatal.ok()) fmt::print("  rerun the same command to continue.\n");
}

// Flags that are parsed into engine options only after every check passed.
struct RawFlags {
  std::string max_size = "10MiB";
  std::string policy = "reject";
  std::string sync_mode = "batch";
  int threads = 0;
  int batch_records = 0;
  bool quiet = false;
  bool no_links = false;
  // IMAP
  std::string imap_master, imap_secret_file, imap_credentials, imap_auth = "plain", imap_token_command;
  std::string ca_file;
  bool tls_insecure = false;
  int connections = 16, connections_per_mailbox = 2, imap_batch = 100;
  // PST
  std::string pst_volume_size = "20GB";
  int pst_buffered_volumes = 64;
  std::string pst_open_memory = "128MiB";
  // Graph
  std::string graph_tenant, graph_client_id, graph_secret_file, graph_certificate, graph_login_url, graph_url,
      graph_mode = "importmime";
  std::string graph_request_budget, graph_upload_budget;
  uint64_t graph_request_cap = 4u << 20, graph_upload_session_min = 3u << 20;
};

// Every flag checked before anything is created on disk (issue #8 item 9).
// Returns the exit code to use, or 0 when the flags are fine.
int CheckImportFlags(const RawFlags& f, wxa::pipeline::ImportOptions& o, wxa::sinks::SinkOptions& so) {
  auto usage = [](const std::string& flag, const wxa::Status& s) {
    fmt::print(stderr, "error: {}: {}\n", flag, s.message());
    return kExitUsage;
  };
  auto size = wxa::limits::ParseSize(f.max_size);
  if (!size.ok()) return usage("--max-item-size", size.status());
  o.limit.max_bytes = *size;
  auto pol = wxa::limits::ParsePolicy(f.policy);
  if (!pol.ok()) return usage("--oversize", pol.status());
  o.limit.policy = *pol;
  auto mode = wxa::sinks::ParseSyncMode(f.sync_mode);
  if (!mode.ok()) return usage("--sync", mode.status());
  o.sync_mode = *mode;
  o.threads = static_cast<size_t>(f.threads);
  if (f.batch_records > 0) o.batch_records = static_cast<size_t>(f.batch_records);
  auto target = wxa::sinks::ParseTarget(o.target);
  if (!target.ok()) return usage("--to", target.status());
  if (auto lv = wxa::maildir::FolderLevels(o.folder); !lv.ok()) return usage("--folder", lv.status());
  if (target->kind == wxa::sinks::Target::Kind::kMaildir) {
    if (auto d = wxa::maildir::FolderDirName(o.folder); !d.ok()) return usage("--folder", d.status());
  }
  if (target->remote() && o.index_dir.empty()) {
    return usage("--index", wxa::Status::InvalidArgument(
                                fmt::format("{}: targets need --index DIR (the index makes reruns exactly-once)",
                                            wxa::sinks::TargetKindName(target->kind))));
  }
  so.local.folder = o.folder;
  so.local.sync_mode = o.sync_mode;
  so.local.link_copies = !f.no_links;
  auto& im = so.imap;
  if (f.imap_auth == "plain") {
    im.auth = wxa::sinks::ImapOptions::Auth::kPlain;
  } else if (f.imap_auth == "login") {
    im.auth = wxa::sinks::ImapOptions::Auth::kLogin;
  } else if (f.imap_auth == "xoauth2") {
    im.auth = wxa::sinks::ImapOptions::Auth::kXoauth2;
  } else {
    return usage("--imap-auth", wxa::Status::InvalidArgument("plain, login or xoauth2"));
  }
  im.master_user = f.imap_master;
  if (!f.imap_master.empty()) {
    if (f.imap_secret_file.empty()) {
      return usage("--imap-master", wxa::Status::InvalidArgument("needs --imap-secret-file FILE"));
    }
    auto secret = wxa::sinks::ReadSecretFile(f.imap_secret_file);
    if (!secret.ok()) return usage("--imap-secret-file", secret.status());
    im.master_secret = *secret;
  }
  if (!f.imap_credentials.empty()) {
    if (auto s = wxa::sinks::LoadImapCredentials(f.imap_credentials, &im); !s.ok()) {
      return usage("--imap-credentials", s);
    }
  }
  im.token_command = f.imap_token_command;
  im.ca_file = f.ca_file;
  im.tls_insecure = f.tls_insecure;
  im.connections = static_cast<size_t>(f.connections);
  im.connections_per_mailbox = static_cast<size_t>(f.connections_per_mailbox);
  im.batch_max_messages = static_cast<size_t>(f.imap_batch);
  auto volume = wxa::limits::ParseSize(f.pst_volume_size);
  if (!volume.ok()) return usage("--pst-volume-size", volume.status());
  if (*volume < (1u << 20)) return usage("--pst-volume-size", wxa::Status::InvalidArgument("at least 1MiB"));
  so.pst.volume_size = *volume;
  so.pst.max_buffered_volumes = static_cast<size_t>(f.pst_buffered_volumes);
  auto open_memory = wxa::limits::ParseSize(f.pst_open_memory);
  if (!open_memory.ok()) return usage("--pst-open-memory", open_memory.status());
  if (*open_memory < (1u << 20)) return usage("--pst-open-memory", wxa::Status::InvalidArgument("at least 1MiB"));
  so.pst.max_open_volume_bytes = *open_memory;
  auto& g = so.graph;
  g.tenant = f.graph_tenant;
  g.client_id = f.graph_client_id;
  g.certificate_file = f.graph_certificate;
  if (!f.graph_login_url.empty()) g.login_url = f.graph_login_url;
  if (!f.graph_url.empty()) g.graph_url = f.graph_url;
  if (f.graph_mode == "importmime") {
    g.mode = wxa::sinks::GraphOptions::Mode::kImportMime;
  } else if (f.graph_mode == "extprops") {
    g.mode = wxa::sinks::GraphOptions::Mode::kExtProps;
  } else {
    return usage("--graph-mode", wxa::Status::InvalidArgument("importmime or extprops"));
  }
  if (!f.graph_request_budget.empty()) {
    auto b = wxa::sinks::graph::ParseBudget(f.graph_request_budget);
    if (!b.ok()) return usage("--graph-request-budget", b.status());
    g.request_budget = b->first;
    g.request_window = b->second;
  }
  if (f.graph_request_cap < 16384 || f.graph_request_cap > (1ull << 30)) {
    return usage("--graph-request-cap", wxa::Status::InvalidArgument("between 16384 and 1073741824 bytes"));
  }
  if (f.graph_upload_session_min == 0 || f.graph_upload_session_min > (150ull << 20)) {
    return usage("--graph-upload-session-min", wxa::Status::InvalidArgument("between 1 and 157286400 bytes"));
  }
  g.max_request_bytes = f.graph_request_cap;
  g.min_upload_session_bytes = f.graph_upload_session_min;
  if (!f.graph_upload_budget.empty()) {
    auto b = wxa::sinks::graph::ParseBudget(f.graph_upload_budget);
    if (!b.ok()) return usage("--graph-upload-budget", b.status());
    g.upload_budget_bytes = b->first;
    g.upload_window = b->second;
  }
  g.ca_file = f.ca_file;
  g.tls_insecure = f.tls_insecure;
  g.connections = static_cast<size_t>(f.connections);
  if (target->kind == wxa::sinks::Target::Kind::kGraph) {
    if (g.tenant.empty() || g.client_id.empty()) {
      return usage("--to", wxa::Status::InvalidArgument("a graph target needs --graph-tenant and --graph-client-id"));
    }
    if (f.graph_secret_file.empty() == f.graph_certificate.empty()) {
      return usage("--to", wxa::Status::InvalidArgument(
                               "a graph target needs one of --graph-secret-file or --graph-certificate"));
    }
    if (!f.graph_secret_file.empty()) {
      auto secret = wxa::sinks::ReadSecretFile(f.graph_secret_file);
      if (!secret.ok()) return usage("--graph-secret-file", secret.status());
      g.client_secret = *secret;
    }
  }
  if (target->kind == wxa::sinks::Target::Kind::kImap || target->kind == wxa::sinks::Target::Kind::kImaps) {
    if (im.master_user.empty() && im.credentials.empty() && im.token_command.empty()) {
      return usage("--to", wxa::Status::InvalidArgument(
                               "an IMAP target needs --imap-master with --imap-secret-file, "
                               "--imap-credentials, or --imap-auth xoauth2 with --imap-token-command"));
    }
    if (im.auth == wxa::sinks::ImapOptions::Auth::kXoauth2 && im.token_command.empty() && im.credentials.empty()) {
      return usage("--imap-auth", wxa::Status::InvalidArgument("xoauth2 needs --imap-token-command"));
    }
  }
  return 0;
}

void ShowProgress(const wxa::pipeline::Counts& c, double elapsed) {
  const double rate = c.items / std::max(elapsed, 1e-6);
  std::string share, eta;
  if (c.source_total > 0) {
    const double done = std::min(1.0, static_cast<double>(c.source_bytes) / c.source_total);
    share = fmt::format("{:5.1f}% ", 100 * done);
    if (done > 0.001) eta = fmt::format(", ETA {}", Hms(elapsed * (1 - done) / done));
  }
  fmt::print(stderr, "\r  {}{} records, {} imported, {} deliveries, {:.0f} items/s, {:.1f} MB/s{}   ", share,
             Thousands(c.records), Thousands(c.imported), Thousands(c.deliveries), rate,
             c.bytes_written / 1e6 / std::max(elapsed, 1e-6), eta);
}

int RunImportCommand(wxa::pipeline::ImportOptions& o, const wxa::sinks::SinkOptions& so, bool quiet) {
  o.stop = &g_stop;
  o.make_sink = [so](const wxa::sinks::Target& t) { return wxa::sinks::MakeSink(t, so); };
  const bool tty = isatty(STDERR_FILENO) != 0 && !quiet;
  if (tty) o.on_progress = ShowProgress;
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  wxa::mime::InitGMime();  // once, before the pipeline's threads start
  auto result = wxa::pipeline::RunImport(o);
  if (tty) fmt::print(stderr, "\r{:100}\r", "");
  if (!result.ok()) {
    fmt::print(stderr, "error: {}\n", result.status().message());
    return kExitFatal;  // could not start (the flags themselves were fine)
  }
  if (!quiet) PrintSummary(o, *result);
  if (!result->fatal.ok()) {
    if (quiet) fmt::print(stderr, "error: {}\n", result->fatal.ToString());
    // A target that went away is worth a rerun later; a full disk is not, by itself.
    return result->target_kind == "imap" || result->target_kind == "imaps" || result->target_kind == "graph"
               ? kExitTempFail
               : kExitFatal;
  }
  return result->interrupted ? kExitInterrupted : 0;
}

void AddImapFlags(CLI::App* cmd, RawFlags& f) {
  cmd->add_option("--imap-master", f.imap_master, "IMAP: log in to each mailbox as this admin (SASL PLAIN authzid)");
  cmd->add_option("--imap-secret-file", f.imap_secret_file, "IMAP: file holding the master user's password");
  cmd->add_option("--imap-credentials", f.imap_credentials, "IMAP: CSV mailbox,login,secret");
  cmd->add_option("--imap-auth", f.imap_auth, "IMAP: plain (default), login or xoauth2");
  cmd->add_option("--imap-token-command", f.imap_token_command,
                  "IMAP XOAUTH2: command run with the mailbox as argument; prints the token");
  cmd->add_option("--ca-file", f.ca_file, "TLS: CA certificates to verify the server with (default: system store)");
  cmd->add_flag("--tls-insecure", f.tls_insecure, "TLS: do not verify the server certificate (tests only)");
  cmd->add_option("--connections", f.connections, "IMAP: connections in total (default 16)")->check(CLI::Range(1, 1024));
  cmd->add_option("--connections-per-mailbox", f.connections_per_mailbox,
                  "IMAP: connections per mailbox (default 2)")->check(CLI::Range(1, 64));
  cmd->add_option("--imap-batch", f.imap_batch, "IMAP: messages per MULTIAPPEND (default 100)")->check(CLI::Range(1, 10000));
  cmd->add_option("--pst-volume-size", f.pst_volume_size, "PST: largest volume before the next one (default 20GB)");
  cmd->add_option("--pst-buffered-volumes", f.pst_buffered_volumes,
                  "PST: volumes keeping a 256 KB write buffer at once; others write out and free theirs (default 64)")
      ->check(CLI::Range(1, 1000000));
  cmd->add_option("--pst-open-memory", f.pst_open_memory,
                  "PST: memory the open volumes may hold for their indexes and tables before all are finished "
                  "early (default 128MiB)");
  cmd->add_option("--graph-tenant", f.graph_tenant, "Graph: Entra ID tenant (id or domain)");
  cmd->add_option("--graph-client-id", f.graph_client_id, "Graph: application (client) id");
  cmd->add_option("--graph-secret-file", f.graph_secret_file, "Graph: file holding the client secret");
  cmd->add_option("--graph-certificate", f.graph_certificate,
                  "Graph: PEM file with the private key and certificate (JWT client assertion)");
  cmd->add_option("--graph-login-url", f.graph_login_url,
                  "Graph: token endpoint base (default https://login.microsoftonline.com)");
  cmd->add_option("--graph-url", f.graph_url, "Graph: API base (default https://graph.microsoft.com)");
  cmd->add_option("--graph-mode", f.graph_mode, "Graph: importmime (default) or extprops");
  cmd->add_option("--graph-request-budget", f.graph_request_budget,
                  "Graph: requests per window per mailbox, N/SECONDS (default 10000/600, Graph's limit)");
  cmd->add_option("--graph-upload-budget", f.graph_upload_budget,
                  "Graph: bytes uploaded per window per mailbox, BYTES/SECONDS (default 150000000/300)");
  cmd->add_option("--graph-request-cap", f.graph_request_cap,
                  "Graph: largest request body in bytes (default 4194304, Graph's cap)");
  cmd->add_option("--graph-upload-session-min", f.graph_upload_session_min,
                  "Graph extprops: attachments from this size go through an upload session (default 3145728)");
}

}  // namespace

int main(int argc, char** argv) {
  wxa::core::RaiseOpenFileLimit();  // local targets keep folders open per mailbox
  CLI::App app{"wxarchiver: archive WeChat/WeCom communications into mailboxes"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "wxarchiver 0.2.0");

  wxa::pipeline::ImportOptions io;
  RawFlags f;
  auto* imp = app.add_subcommand("import", "import a WeCom archive export into mailboxes");
  imp->add_option("--source", io.source_dir, "directory with *.jsonl records and media/")->required();
  imp->add_option("--directory", io.directory_csv, "user directory CSV: userid,name,mobile,email")->required();
  imp->add_option("--mapping", io.mapping_csv, "custom mapping CSV: mobile,mailbox (looked at first)");
  imp->add_option("--mailboxes", io.mailboxes_file, "file listing the valid mailboxes, one per line");
  imp->add_option("--to", io.target,
                  "target: maildir:DIR, eml:DIR, pst:DIR, imap://HOST[:PORT], imaps://HOST[:PORT], graph: or null:")->required();
  imp->add_option("--report", io.report_path, "write the JSON run report here");
  imp->add_option("--max-item-size", f.max_size, "largest rendered item imported (default 10MiB)");
  imp->add_option("--oversize", f.policy,
                  "policy for larger items: reject (default), or stub (their largest attachments replaced by a "
                  "text part naming the file, size, SHA-256 and where it is kept)");
  imp->add_option("--folder", io.folder, "folder in each mailbox (default 'WeChat Archiver'; levels with '/')");
  imp->add_option("--corp", io.corp, "corp id; part of every item's identity (default 'default')");
  imp->add_option("--default-region", io.default_region,
                  "region for phone numbers without a country code (default CN)");
  imp->add_option("--threads", f.threads, "worker threads (default 0: all cores)")->check(CLI::Range(0, 1024));
  imp->add_option("--batch-records", f.batch_records,
                  "records per batch: one index commit claims a batch (default 2048)")
      ->check(CLI::Range(1, 65536));
  imp->add_option("--index", io.index_dir,
                  "LMDB index directory (default: <target dir>/.wxarchiver; required for remote targets)");
  imp->add_flag("--rescan", io.rescan, "read every record again, ignoring the cursors");
  imp->add_option("--sync", f.sync_mode,
                  "durability of written items: batch (syncfs per group of batches, default) or file (fsync per item)");
  imp->add_flag("--quiet", f.quiet, "no progress line and no summary");
  imp->add_flag("--no-links", f.no_links,
                "maildir/eml: a separate copy per mailbox instead of hard links to one file per item");
  AddImapFlags(imp, f);

  std::string status_index, status_target;
  bool status_json = false;
  auto* st = app.add_subcommand("status", "what the index says: counts, in-doubt deliveries, cursors");
  auto* st_index = st->add_option("--index", status_index, "index directory");
  st->add_option("--to", status_target, "the import target (its default index)")->excludes(st_index);
  st->add_flag("--json", status_json, "JSON for scripts");

  wxa::pipeline::VerifyOptions vo;
  RawFlags vf;
  std::string verify_folder = "WeChat Archiver";
  bool verify_json = false;
  auto* ver = app.add_subcommand("verify", "compare what the target holds with what the index says is done");
  ver->add_option("--index", vo.index_dir, "index directory")->required();
  ver->add_option("--to", vo.target, "the import target")->required();
  ver->add_option("--folder", verify_folder, "folder in each mailbox (default 'WeChat Archiver')");
  ver->add_flag("--json", verify_json, "JSON for scripts");
  AddImapFlags(ver, vf);

  wxa::gen::GenOptions go;
  bool clean = false;
  auto* gen = app.add_subcommand("gen", "generate a synthetic WeCom archive corpus");
  gen->add_option("--out", go.out, "output directory")->required();
  gen->add_option("--users", go.users, "employees in the directory")->capture_default_str()->check(CLI::Range(1, 1000000));
  gen->add_option("--days", go.days, "days of messages, one .jsonl file per day")->capture_default_str()->check(CLI::Range(1, 100000));
  gen->add_option("--seed", go.seed, "random seed")->capture_default_str();
  gen->add_option("--media-scale", go.media_scale, "multiplies media sizes")->capture_default_str()->check(CLI::Range(0.0, 1000.0));
  gen->add_option("--rate", go.messages_per_user_day, "messages per user per day")->capture_default_str()->check(CLI::Range(0.0, 1e7));
  gen->add_flag("--clean", clean, "no broken records and no files over 10 MiB");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    (void)app.exit(e);  // prints the message and the usage hint
    return kExitUsage;  // what the README promises, whatever CLI11's own code is
  }

  if (imp->parsed()) {
    wxa::sinks::SinkOptions so;
    if (int rc = CheckImportFlags(f, io, so); rc != 0) return rc;
    return RunImportCommand(io, so, f.quiet);
  }
  if (st->parsed()) {
    if (status_index.empty() && status_target.empty()) {
      fmt::print(stderr, "error: status needs --index DIR or --to TARGET\n");
      return kExitUsage;
    }
    std::string dir = !status_index.empty() ? status_index : wxa::index::DefaultIndexDir(status_target);
    wxa::index::IndexOptions ro;
    ro.read_only = true;
    auto idx = wxa::index::Index::Open(dir, ro);
    if (!idx.ok()) {
      fmt::print(stderr, "error: {}\n", idx.status().message());
      return kExitFatal;
    }
    auto stats = (*idx)->Stats();
    if (!stats.ok()) {
      fmt::print(stderr, "error: {}\n", stats.status().message());
      return kExitFatal;
    }
    fmt::print("{}", status_json ? wxa::index::StatusJson(dir, *stats) : wxa::index::StatusText(dir, *stats));
    return 0;
  }
  if (ver->parsed()) {
    wxa::pipeline::ImportOptions tmp;
    tmp.target = vo.target;
    tmp.folder = verify_folder;
    tmp.index_dir = vo.index_dir;
    wxa::sinks::SinkOptions so;
    if (int rc = CheckImportFlags(vf, tmp, so); rc != 0) return rc;
    vo.make_sink = [so](const wxa::sinks::Target& t) { return wxa::sinks::MakeSink(t, so); };
    auto r = wxa::pipeline::RunVerify(vo);
    if (!r.ok()) {
      fmt::print(stderr, "error: {}\n", r.status().message());
      return kExitFatal;
    }
    fmt::print("{}", verify_json ? wxa::pipeline::VerifyJson(*r) : wxa::pipeline::VerifyText(*r));
    return r->clean() ? 0 : kExitVerifyProblems;
  }
  if (gen->parsed()) {
    go.broken_records = go.huge_files = !clean;
    auto r = wxa::gen::GenerateCorpus(go);
    if (!r.ok()) {
      fmt::print(stderr, "error: {}\n", r.status().message());
      return kExitFatal;
    }
    fmt::print("generated {} records ({:.1f} MB of JSON lines), {} media files ({:.1f} MB) in {}\n",
               r->records, r->jsonl_bytes / 1e6, r->media_files, r->media_bytes / 1e6, go.out);
    return 0;
  }
  return kExitUsage;
}
