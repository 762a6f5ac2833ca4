#include "engine/sinks/imap/imap_sink.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <unordered_set>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "engine/sinks/imap/imap_protocol.h"
#include "formats/core/csv.h"
#include "formats/core/file.h"
#include "formats/core/text.h"
#include "formats/maildir/maildir_writer.h"

namespace wxa::sinks {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;
using Clock = std::chrono::steady_clock;
using imap::Response;

Result<std::string> ReadSecretFile(const std::string& path) {
  WXA_ASSIGN_OR_RETURN(std::string s, core::ReadUserFile(nullptr, path, 1u << 20));
  size_t nl = s.find_first_of("\r\n");
  if (nl != std::string::npos) s.resize(nl);
  if (s.empty()) return Status::InvalidArgument(fmt::format("secret file {} is empty", path));
  return s;
}

Status LoadImapCredentials(const std::string& csv_path, ImapOptions* options) {
  auto text = core::ReadUserFile(nullptr, csv_path);
  if (!text.ok()) return text.status().WithContext("IMAP credentials");
  // No header requirement: "mailbox,login,secret" rows; a first row whose
  // mailbox is not an address is taken for a header.
  auto table = core::ParseCsv("mailbox,login,secret\n" + *text, csv_path);
  if (!table.ok()) return table.status().WithContext("IMAP credentials");
  for (const auto& row : table->rows) {
    if (row.fields.size() < 3 || row.fields[0].find('@') == std::string::npos) {
      if (row.line == 2) continue;  // the file's own header
      return Status::InvalidArgument(fmt::format(
          "IMAP credentials {} line {}: expected mailbox,login,secret", csv_path, row.line - 1));
    }
    options->credentials[core::AsciiLower(row.fields[0])] = {row.fields[1], row.fields[2]};
  }
  return Status::Ok();
}

namespace {

// WXA_IMAP_TRACE=1 prints the conversation to stderr (one line per
// command or response, literals summarised, credentials never shown).
bool Tracing() {
  static const bool on = [] {
    const char* v = std::getenv("WXA_IMAP_TRACE");
    return v != nullptr && *v != '\0' && *v != '0';
  }();
  return on;
}

void Trace(const void* conn, const char* dir, std::string_view text) {
  if (!Tracing()) return;
  std::string_view line = text.substr(0, text.find("\r\n"));
  std::string shown(line.substr(0, 300));
  for (const char* secret : {" AUTHENTICATE ", " LOGIN "}) {
    size_t at = shown.find(secret);
    if (at != std::string::npos) {
      size_t mech_end = shown.find(' ', at + std::strlen(secret));
      shown = shown.substr(0, mech_end == std::string::npos ? shown.size() : mech_end) + " <redacted>";
    }
  }
  fmt::print(stderr, "imap {} {} {}\n", conn, dir, shown);
}

bool IsLoopback(const std::string& host) {
  if (host == "localhost" || host == "::1") return true;
  return host.rfind("127.", 0) == 0;
}

// Runs `cmd mailbox`; its first stdout line is the token. Blocking: called
// on the sink's helper pool, never on the I/O thread.
Result<std::string> RunTokenCommand(const std::string& cmd, const std::string& mailbox) {
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return Status::FromErrno("pipe", "token command", errno);
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(out[0]);
    ::close(out[1]);
    return Status::FromErrno("fork", "token command", errno);
  }
  if (pid == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    const std::string script = cmd + " \"$1\"";
    ::execl("/bin/sh", "sh", "-c", script.c_str(), "sh", mailbox.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(out[1]);
  std::string token;
  char buf[4096];
  while (true) {
    ssize_t n = ::read(out[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (token.size() < (1u << 20)) token.append(buf, static_cast<size_t>(n));
  }
  ::close(out[0]);
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    return Status::IOError(fmt::format("the token command failed for {} (exit {})", mailbox,
                                       WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st)));
  }
  token = std::string(core::Trim(token.substr(0, token.find('\n'))));
  if (token.empty()) return Status::IOError(fmt::format("the token command printed no token for {}", mailbox));
  return token;
}

// One unit of work for a mailbox's connections.
struct Job {
  enum class Kind : uint8_t { kAppend, kProbe, kInventory } kind = Kind::kAppend;
  Delivery d;
  DoneFn done;
  ProbeFn probe_done;
  InventoryFn inventory_done;
  bool solo = false;  // send alone: isolating the message a batch was refused for
};

// Why a connection ended, so the scheduler knows what to do next.
enum class End : uint8_t {
  kIdle,          // nothing left to do: logged out
  kConnectFailed, // could not connect / TLS / greeting (transient unless TLS says otherwise)
  kLost,          // connection lost after login (transient)
  kMailboxBad,    // login refused, folder unusable: the mailbox is stopped
  kSinkBad,       // certificate refused, cleartext refused: the target is unusable
};

struct Outcome {
  End end = End::kIdle;
  Status error;
  bool logged_in = false;
};

// A connection: a socket (plain, or TLS from the start or after STARTTLS),
// a buffered response reader that splices literals into lines, and a
// watchdog that closes the socket when an operation overruns its deadline.
class Conn {
 public:
  Conn(asio::io_context& io, ssl::context& ctx) : io_(io), stream_(io, ctx), watchdog_(io) {}

  bool tls() const { return tls_; }
  const std::set<std::string>& caps() const { return caps_; }
  bool Has(const std::string& c) const { return caps_.count(c) != 0; }
  std::string NextTag() { return fmt::format("W{}", ++tag_); }

  void Arm(std::chrono::milliseconds ms) {
    watchdog_.expires_after(ms);
    watchdog_.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) {
        timed_out_ = true;
        boost::system::error_code ignored;
        stream_.next_layer().close(ignored);
      }
    });
  }
  void Disarm() { watchdog_.cancel(); }
  void Close() {
    watchdog_.cancel();
    boost::system::error_code ignored;
    stream_.next_layer().close(ignored);
  }
  bool timed_out() const { return timed_out_; }

  awaitable<Status> Connect(const std::string& host, uint16_t port, bool implicit_tls,
                            std::chrono::milliseconds timeout) {
    boost::system::error_code ec;
    tcp::resolver resolver(io_);
    Arm(timeout);
    auto endpoints = co_await resolver.async_resolve(host, std::to_string(port),
                                                     asio::redirect_error(use_awaitable, ec));
    if (ec) co_return Failed("resolve", ec);
    co_await asio::async_connect(stream_.next_layer(), endpoints, asio::redirect_error(use_awaitable, ec));
    if (ec) co_return Failed("connect to", ec);
    boost::system::error_code nd;
    stream_.next_layer().set_option(tcp::no_delay(true), nd);
    host_ = host;
    if (implicit_tls) {
      Status s = co_await Handshake(host);
      if (!s.ok()) co_return s;
    }
    auto greeting = co_await Read();
    if (!greeting.ok()) co_return greeting.status();
    if (greeting->status == "BYE") {
      co_return Status::IOError(fmt::format("server said BYE at connect: {}", greeting->text));
    }
    if (greeting->status != "OK" && greeting->status != "PREAUTH") {
      co_return Status::IOError(fmt::format("unexpected greeting: {}", core::OneLine(greeting->line)));
    }
    Disarm();
    co_return Status::Ok();
  }

  awaitable<Status> Handshake(const std::string& host) {
    boost::system::error_code ec;
    if (!SSL_set_tlsext_host_name(stream_.native_handle(), host.c_str())) {
      co_return Status::IOError("TLS: cannot set the server name");
    }
    co_await stream_.async_handshake(ssl::stream_base::client, asio::redirect_error(use_awaitable, ec));
    if (ec) {
      std::string why = ec.message();
      long verify = SSL_get_verify_result(stream_.native_handle());
      if (verify != X509_V_OK) why = X509_verify_cert_error_string(verify);
      co_return Status::InvalidArgument(
          fmt::format("TLS with {} failed: {} (use --ca-file for a private CA)", host, why));
    }
    tls_ = true;
    co_return Status::Ok();
  }

  awaitable<Status> Write(const std::vector<asio::const_buffer>& bufs, std::chrono::milliseconds timeout) {
    boost::system::error_code ec;
    if (Tracing() && !bufs.empty()) {
      // The command line and each literal's announcement, never the literals.
      for (size_t i = 0; i < bufs.size(); ++i) {
        std::string_view b(static_cast<const char*>(bufs[i].data()), bufs[i].size());
        if (i == 0 || (b.size() < 512 && b.size() > 3 && b.substr(b.size() - 3) == "}\r\n")) Trace(this, "C:", b);
      }
    }
    Arm(timeout);
    if (tls_) {
      co_await asio::async_write(stream_, bufs, asio::redirect_error(use_awaitable, ec));
    } else {
      co_await asio::async_write(stream_.next_layer(), bufs, asio::redirect_error(use_awaitable, ec));
    }
    Disarm();
    if (ec) co_return Failed("write to", ec);
    co_return Status::Ok();
  }
  awaitable<Status> Write(std::string_view s, std::chrono::milliseconds timeout) {
    std::vector<asio::const_buffer> b{asio::buffer(s.data(), s.size())};
    co_return co_await Write(b, timeout);
  }

  // One response, literals spliced in ("{n}\r\n" then the n bytes).
  awaitable<Result<Response>> Read(std::chrono::milliseconds timeout = std::chrono::minutes(2)) {
    std::string line;
    while (true) {
      auto part = co_await ReadLine(timeout);
      if (!part.ok()) co_return part.status();
      line += *part;
      auto lit = imap::TrailingLiteral(*part);
      if (!lit) break;
      if (*lit > (64u << 20)) co_return Status::IOError("server sent a literal over 64 MiB");
      line += "\r\n";
      auto bytes = co_await ReadExact(*lit, timeout);
      if (!bytes.ok()) co_return bytes.status();
      line += *bytes;
    }
    Trace(this, "S:", line);
    Response r = imap::ParseResponse(line);
    if (r.kind == Response::Kind::kUntagged && r.status == "CAPABILITY") {
      caps_ = imap::ParseCapabilities(r.text);
    } else if (r.code.rfind("CAPABILITY ", 0) == 0) {
      caps_ = imap::ParseCapabilities(r.code.substr(11));
    }
    co_return r;
  }

  // A simple command: sends it, collects untagged responses, returns the tagged one.
  awaitable<Result<Response>> Simple(const std::string& command, std::vector<Response>* untagged,
                                     std::chrono::milliseconds timeout) {
    const std::string tag = NextTag();
    std::string line = tag + " " + command + "\r\n";
    Status s = co_await Write(line, timeout);
    if (!s.ok()) co_return s;
    while (true) {
      auto r = co_await Read(timeout);
      if (!r.ok()) co_return r.status();
      if (r->kind == Response::Kind::kTagged && r->tag == tag) co_return std::move(*r);
      if (r->kind == Response::Kind::kUntagged && r->status == "BYE") {
        co_return Status::IOError(fmt::format("server closed the connection: {}", r->text));
      }
      if (untagged != nullptr && r->kind == Response::Kind::kUntagged) untagged->push_back(std::move(*r));
    }
  }

  awaitable<Status> StartTls(const std::string& host, std::chrono::milliseconds timeout) {
    auto r = co_await Simple("STARTTLS", nullptr, timeout);
    if (!r.ok()) co_return r.status();
    if (r->status != "OK") co_return Status::IOError(fmt::format("STARTTLS refused: {}", r->text));
    // Anything buffered before the handshake would be a man-in-the-middle's.
    buf_.clear();
    Arm(timeout);
    Status s = co_await Handshake(host);
    Disarm();
    if (!s.ok()) co_return s;
    caps_.clear();  // capabilities must be asked again over TLS (RFC 3501 6.2.1)
    co_return Status::Ok();
  }

 private:
  Status Failed(const char* what, const boost::system::error_code& ec) {
    if (timed_out_) return Status::IOError(fmt::format("{} {}: timed out", what, host_));
    return Status::IOError(fmt::format("{} {}: {}", what, host_.empty() ? "server" : host_, ec.message()));
  }

  awaitable<Result<std::string>> ReadLine(std::chrono::milliseconds timeout) {
    while (true) {
      size_t nl = buf_.find("\r\n");
      if (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 2);
        co_return line;
      }
      if (buf_.size() > (1u << 20)) co_return Status::IOError("server sent a line over 1 MiB");
      Status s = co_await Fill(timeout);
      if (!s.ok()) co_return s;
    }
  }
  awaitable<Result<std::string>> ReadExact(uint64_t n, std::chrono::milliseconds timeout) {
    while (buf_.size() < n) {
      Status s = co_await Fill(timeout);
      if (!s.ok()) co_return s;
    }
    std::string out = buf_.substr(0, n);
    buf_.erase(0, n);
    co_return out;
  }
  awaitable<Status> Fill(std::chrono::milliseconds timeout) {
    char tmp[16384];
    boost::system::error_code ec;
    Arm(timeout);
    size_t n;
    if (tls_) {
      n = co_await stream_.async_read_some(asio::buffer(tmp), asio::redirect_error(use_awaitable, ec));
    } else {
      n = co_await stream_.next_layer().async_read_some(asio::buffer(tmp), asio::redirect_error(use_awaitable, ec));
    }
    Disarm();
    if (ec) co_return Failed("read from", ec);
    buf_.append(tmp, n);
    co_return Status::Ok();
  }

  asio::io_context& io_;
  ssl::stream<tcp::socket> stream_;
  asio::steady_timer watchdog_;
  bool tls_ = false;
  bool timed_out_ = false;
  std::string host_;
  std::string buf_;
  std::set<std::string> caps_;
  uint64_t tag_ = 0;
};

class ImapSink final : public Sink {
 public:
  ImapSink(Target t, ImapOptions o)
      : target_(std::move(t)), o_(std::move(o)), ssl_(ssl::context::tls_client), pool_(1) {
    levels_.clear();
    auto lv = maildir::FolderLevels(o_.folder);
    if (lv.ok()) {
      for (auto l : *lv) levels_.emplace_back(l);
    }
    o_.connections = std::max<size_t>(1, o_.connections);
    o_.connections_per_mailbox = std::max<size_t>(1, o_.connections_per_mailbox);
    o_.max_commands_in_flight = std::max<size_t>(1, o_.max_commands_in_flight);
    o_.batch_max_messages = std::max<size_t>(1, o_.batch_max_messages);
  }

  ~ImapSink() override { Stop(); }

  const char* kind() const override { return target_.kind == Target::Kind::kImaps ? "imaps" : "imap"; }
  Capabilities capabilities() const override {
    Capabilities c;
    c.remote = true;
    c.checks_mailboxes = o_.check_mailboxes && (!o_.master_user.empty() || !o_.credentials.empty());
    return c;
  }

  Status Open() override {
    if (levels_.empty()) return Status::InvalidArgument(fmt::format("folder '{}' is not usable", o_.folder));
    if (o_.master_user.empty() && o_.credentials.empty() && o_.auth != ImapOptions::Auth::kXoauth2) {
      return Status::InvalidArgument(
          "an IMAP target needs credentials: --imap-master USER with --imap-secret-file, or "
          "--imap-credentials FILE, or --imap-auth xoauth2 with --imap-token-command");
    }
    if (o_.auth == ImapOptions::Auth::kXoauth2 && o_.token_command.empty() && o_.credentials.empty()) {
      return Status::InvalidArgument("--imap-auth xoauth2 needs --imap-token-command");
    }
    boost::system::error_code ec;
    if (o_.tls_insecure) {
      ssl_.set_verify_mode(ssl::verify_none);
    } else {
      ssl_.set_verify_mode(ssl::verify_peer);
      if (!o_.ca_file.empty()) {
        ssl_.load_verify_file(o_.ca_file, ec);
        if (ec) return Status::InvalidArgument(fmt::format("--ca-file {}: {}", o_.ca_file, ec.message()));
      } else {
        ssl_.set_default_verify_paths(ec);
      }
      ssl_.set_verify_callback(ssl::host_name_verification(target_.host));
    }
    work_.emplace(asio::make_work_guard(io_));
    thread_ = std::thread([this] { io_.run(); });
    // One connection up front: the server answers, TLS verifies, and
    // credentials would not go in the clear. Clear errors before any work.
    std::promise<Status> p;
    auto f = p.get_future();
    asio::co_spawn(io_, Preflight(), [&p](std::exception_ptr e, Status s) {
      p.set_value(e ? Status::IOError("preflight failed with an exception") : s);
    });
    Status s = f.get();
    if (!s.ok()) {
      Stop();
      return s.WithContext(fmt::format("IMAP target {}:{}", target_.host, target_.port));
    }
    return Status::Ok();
  }

  void CheckMailboxes(const std::vector<std::string>& candidates, CheckFn done) override {
    auto results = std::make_shared<std::vector<std::pair<std::string, MailboxVerdict>>>();
    auto left = std::make_shared<size_t>(candidates.size());
    auto finished = std::make_shared<CheckFn>(std::move(done));
    if (candidates.empty()) {
      (*finished)({});
      return;
    }
    asio::post(io_, [this, candidates, results, left, finished] {
      for (const auto& mb : candidates) {
        checks_.push_back({mb, [this, results, left, finished](std::string m, MailboxVerdict v) {
                             results->emplace_back(std::move(m), v);
                             if (--*left == 0) {
                               // A server that refused every login: the
                               // credentials are wrong, not the mailboxes.
                               bool any_known = false, any_unknown = false;
                               for (auto& [x, vv] : *results) {
                                 any_known |= vv == MailboxVerdict::kKnown;
                                 any_unknown |= vv == MailboxVerdict::kUnknown;
                               }
                               if (!any_known && any_unknown) {
                                 for (auto& r : *results) r.second = MailboxVerdict::kUnknowable;
                               }
                               (*finished)(std::move(*results));
                             }
                           }});
      }
      PumpChecks();
    });
  }

  void Submit(Delivery d, DoneFn done) override {
    asio::post(io_, [this, d = std::move(d), done = std::move(done)]() mutable {
      Mbox& mb = mbox(d.mailbox);
      Job j;
      j.kind = Job::Kind::kAppend;
      j.d = std::move(d);
      j.done = std::move(done);
      mb.queue.push_back(std::move(j));
      Schedule(mb);
    });
  }

  Status Barrier() override { return Status::Ok(); }  // nothing lingers: batches go as they fill

  void Inventory(const std::string& mailbox, InventoryFn done) override {
    asio::post(io_, [this, mailbox, done = std::move(done)]() mutable {
      Mbox& mb = mbox(mailbox);
      Job j;
      j.kind = Job::Kind::kInventory;
      j.d.mailbox = mailbox;
      j.inventory_done = std::move(done);
      mb.queue.push_back(std::move(j));
      Schedule(mb);
    });
  }

  void Probe(const Delivery& d, ProbeFn done) override {
    Trace(this, "probe", d.mailbox + " " + d.message_id);
    asio::post(io_, [this, d, done = std::move(done)]() mutable {
      Mbox& mb = mbox(d.mailbox);
      Job j;
      j.kind = Job::Kind::kProbe;
      j.d = d;
      j.probe_done = std::move(done);
      mb.queue.push_back(std::move(j));
      Schedule(mb);
    });
  }

  Status Close() override {
    {
      std::promise<void> p;
      auto f = p.get_future();
      asio::post(io_, [this, &p] {
        closing_ = true;
        for (auto& [addr, mb] : mboxes_) {
          for (auto* t : mb.idle) t->cancel();
        }
        if (total_conns_ == 0) {
          p.set_value();
        } else {
          on_all_closed_ = [&p] { p.set_value(); };
        }
      });
      if (thread_.joinable()) f.wait();
    }
    Stop();
    return Status::Ok();
  }

 private:
  struct Mbox {
    std::string addr;
    std::deque<Job> queue;
    size_t conns = 0;
    bool bad = false;
    Status why;
    Clock::time_point not_before{};
    uint32_t failures = 0;
    std::unique_ptr<asio::steady_timer> retry_timer;
    std::vector<asio::steady_timer*> idle;  // connections waiting for work
    bool wanting = false;
    uint32_t uidvalidity = 0;
    size_t commands_out = 0;  // sent or being sent, unanswered, over all its connections
  };
  struct Check {
    std::string mailbox;
    std::function<void(std::string, MailboxVerdict)> done;
  };
  struct InFlight {
    std::string tag;
    std::vector<Job> jobs;
    std::deque<std::string> pieces;  // command text kept alive for the async write
    bool fully_sent = false;
    std::vector<uint32_t> search;    // probe: the SEARCH result
    bool searched = false;
    std::vector<std::string> ids;    // inventory: Message-IDs fetched
  };

  void Stop() {
    if (work_) work_.reset();
    if (thread_.joinable()) {
      io_.stop();
      thread_.join();
    }
    pool_.join();
  }

  Mbox& mbox(const std::string& addr) {
    auto [it, inserted] = mboxes_.try_emplace(addr);
    if (inserted) it->second.addr = addr;
    return it->second;
  }

  std::chrono::milliseconds Backoff(uint32_t failures) {
    uint64_t ms = o_.reconnect_base_ms;
    for (uint32_t i = 1; i < failures && ms < o_.reconnect_max_ms; ++i) ms *= 2;
    ms = std::min<uint64_t>(ms, o_.reconnect_max_ms);
    std::uniform_int_distribution<uint64_t> jitter(0, ms / 2);
    return std::chrono::milliseconds(ms + jitter(rng_));
  }

  // Fails everything queued for a mailbox (it is stopped) or for all (the target is).
  void FailQueue(Mbox& mb, Completion::Kind kind, const Status& why) {
    std::deque<Job> q;
    q.swap(mb.queue);
    for (auto& j : q) {
      if (j.kind == Job::Kind::kAppend) {
        j.done(j.d.id, Completion::Failure(kind, why));
      } else if (j.kind == Job::Kind::kInventory) {
        j.inventory_done(why);
      } else {
        ProbeResult r;
        r.kind = ProbeResult::Kind::kFailed;
        r.error = why;
        r.mailbox_bad = kind == Completion::Kind::kMailboxBad;
        j.probe_done(j.d.id, std::move(r));
      }
    }
  }

  void Schedule(Mbox& mb) {
    if (sink_bad_) {
      FailQueue(mb, Completion::Kind::kSinkBad, sink_error_);
      return;
    }
    if (mb.bad) {
      FailQueue(mb, Completion::Kind::kMailboxBad, mb.why);
      return;
    }
    if (mb.queue.empty()) return;
    if (!mb.idle.empty()) {
      mb.idle.back()->cancel();  // an idle connection of this mailbox takes it
      return;
    }
    const auto now = Clock::now();
    if (now < mb.not_before) {
      if (!mb.retry_timer) mb.retry_timer = std::make_unique<asio::steady_timer>(io_);
      mb.retry_timer->expires_at(mb.not_before);
      mb.retry_timer->async_wait([this, addr = mb.addr](const boost::system::error_code& ec) {
        if (!ec) Schedule(mbox(addr));
      });
      return;
    }
    // A second connection for one mailbox only pays with a long queue.
    const size_t want = mb.conns == 0 ? 1
                        : (mb.queue.size() > o_.batch_max_messages && mb.conns < o_.connections_per_mailbox)
                            ? mb.conns + 1
                            : mb.conns;
    while (mb.conns < want) {
      if (total_conns_ >= o_.connections) {
        // Only a mailbox with no connection at all waits for one (and has an
        // idle one elsewhere closed for it). An extra connection comes from
        // spare capacity only: taking it from another mailbox would close a
        // connection that mailbox soon needs again, and every new connection
        // costs the server a login, a LIST and a SELECT (Dovecot: an imap
        // process and its index opened).
        if (mb.conns == 0) {
          if (!mb.wanting) {
            mb.wanting = true;
            wanting_.push_back(mb.addr);
          }
          ReleaseAnIdleConnection();
        }
        return;
      }
      ++mb.conns;
      ++total_conns_;
      asio::co_spawn(io_, RunConnection(mb.addr), [this, addr = mb.addr](std::exception_ptr e, Outcome out) {
        if (e) out = {End::kLost, Status::IOError("connection ended with an exception"), false};
        ConnectionEnded(addr, std::move(out));
      });
    }
  }

  // Another mailbox waits for a slot: an idle connection gives its up.
  void ReleaseAnIdleConnection() {
    for (auto& [addr, mb] : mboxes_) {
      if (!mb.idle.empty() && mb.queue.empty()) {
        release_idle_ = true;
        mb.idle.back()->cancel();
        return;
      }
    }
  }

  void ConnectionEnded(const std::string& addr, Outcome out) {
    Mbox& mb = mbox(addr);
    --mb.conns;
    --total_conns_;
    switch (out.end) {
      case End::kIdle:
        mb.failures = 0;
        break;
      case End::kConnectFailed:
      case End::kLost:
        if (out.logged_in) {
          consecutive_connect_failures_ = 0;
        } else if (++consecutive_connect_failures_ >= o_.max_connect_failures) {
          SetSinkBad(out.error.WithContext(fmt::format("{} connection attempts failed in a row", consecutive_connect_failures_)));
        }
        ++mb.failures;
        mb.not_before = Clock::now() + Backoff(mb.failures);
        break;
      case End::kMailboxBad:
        mb.bad = true;
        mb.why = out.error;
        ++auth_failures_;
        if (auth_successes_ == 0 && auth_failures_ >= 3 && !o_.master_user.empty()) {
          SetSinkBad(Status::InvalidArgument(fmt::format(
              "the server refused the master user's login for every mailbox tried ({}); check "
              "--imap-master and --imap-secret-file", out.error.message())));
        }
        break;
      case End::kSinkBad:
        SetSinkBad(out.error);
        break;
    }
    Schedule(mb);
    while (!wanting_.empty() && total_conns_ < o_.connections) {
      std::string next = wanting_.front();
      wanting_.pop_front();
      Mbox& w = mbox(next);
      w.wanting = false;
      Schedule(w);
    }
    PumpChecks();
    if (total_conns_ == 0 && on_all_closed_) {
      auto cb = std::move(on_all_closed_);
      on_all_closed_ = nullptr;
      cb();
    }
  }

  void SetSinkBad(const Status& s) {
    if (sink_bad_) return;
    sink_bad_ = true;
    sink_error_ = s;
    for (auto& [addr, mb] : mboxes_) FailQueue(mb, Completion::Kind::kSinkBad, s);
  }

  struct Creds {
    std::string authzid, user, secret;  // secret: password or token
    ImapOptions::Auth method = ImapOptions::Auth::kPlain;
  };

  // The credentials for a mailbox; runs the token command off the I/O thread.
  awaitable<Result<Creds>> CredentialsFor(const std::string& mailbox) {
    Creds c;
    if (auto it = o_.credentials.find(mailbox); it != o_.credentials.end()) {
      c.user = it->second.user;
      c.secret = it->second.secret;
      c.method = o_.auth;
      co_return c;
    }
    if (!o_.master_user.empty() && o_.auth != ImapOptions::Auth::kXoauth2) {
      c.authzid = mailbox;
      c.user = o_.master_user;
      c.secret = o_.master_secret;
      c.method = ImapOptions::Auth::kPlain;  // only SASL carries an authorization id
      co_return c;
    }
    if (o_.auth == ImapOptions::Auth::kXoauth2 && !o_.token_command.empty()) {
      if (auto it = tokens_.find(mailbox); it != tokens_.end() && Clock::now() < it->second.second) {
        c.user = mailbox;
        c.secret = it->second.first;
        c.method = ImapOptions::Auth::kXoauth2;
        co_return c;
      }
      co_await asio::post(pool_, use_awaitable);  // off the I/O thread for the command
      auto token = RunTokenCommand(o_.token_command, mailbox);
      co_await asio::post(io_, use_awaitable);   // back
      if (!token.ok()) co_return token.status();
      tokens_[mailbox] = {*token, Clock::now() + std::chrono::minutes(5)};
      c.user = mailbox;
      c.secret = *token;
      c.method = ImapOptions::Auth::kXoauth2;
      co_return c;
    }
    co_return Status::InvalidArgument(fmt::format("no IMAP credentials for mailbox {}", mailbox));
  }

  std::chrono::milliseconds CommandTimeout(uint64_t bytes = 0) const {
    // Plus one second per MiB: a slow uplink is not a dead server.
    return std::chrono::milliseconds(o_.command_timeout_ms + bytes / 1024);
  }

  // Connect, STARTTLS where offered, refuse cleartext credentials to a
  // remote host, learn the capabilities.
  awaitable<Status> OpenConn(Conn& c) {
    Status s = co_await c.Connect(target_.host, target_.port, target_.kind == Target::Kind::kImaps,
                                  std::chrono::milliseconds(o_.connect_timeout_ms));
    if (!s.ok()) co_return s;
    if (c.caps().empty()) {
      auto r = co_await c.Simple("CAPABILITY", nullptr, CommandTimeout());
      if (!r.ok()) co_return r.status();
    }
    if (!c.tls() && c.Has("STARTTLS")) {
      s = co_await c.StartTls(target_.host, CommandTimeout());
      if (!s.ok()) co_return s;
      auto r = co_await c.Simple("CAPABILITY", nullptr, CommandTimeout());
      if (!r.ok()) co_return r.status();
    }
    if (!c.tls() && !IsLoopback(target_.host)) {
      co_return Status::InvalidArgument(fmt::format(
          "{} offers no STARTTLS: credentials are never sent in the clear to a remote host (use imaps://)",
          target_.host));
    }
    co_return Status::Ok();
  }

  awaitable<Status> Preflight() {
    Conn c(io_, ssl_);
    Status s = co_await OpenConn(c);
    if (s.ok()) (void)co_await c.Simple("LOGOUT", nullptr, CommandTimeout());
    c.Close();
    co_return s;
  }

  // Logs in. kInvalidArgument: refused (the mailbox's problem); else I/O.
  awaitable<Status> Login(Conn& c, const Creds& cr) {
    Result<Response> r = Status::IOError("not sent");
    auto sasl = [&](const char* mech, const std::string& ir) -> awaitable<Result<Response>> {
      if (c.Has("SASL-IR")) co_return co_await c.Simple(fmt::format("AUTHENTICATE {} {}", mech, ir), nullptr, CommandTimeout());
      const std::string tag = c.NextTag();
      std::string line = fmt::format("{} AUTHENTICATE {}\r\n", tag, mech);
      Status ws = co_await c.Write(line, CommandTimeout());
      if (!ws.ok()) co_return ws;
      bool sent = false;
      while (true) {
        auto resp = co_await c.Read(CommandTimeout());
        if (!resp.ok()) co_return resp;
        if (resp->kind == Response::Kind::kTagged && resp->tag == tag) co_return resp;
        if (resp->kind == Response::Kind::kContinuation) {
          // First "+": our response; a second (XOAUTH2's error details): an empty line.
          std::string answer = sent ? std::string("\r\n") : ir + "\r\n";
          sent = true;
          Status ws2 = co_await c.Write(answer, CommandTimeout());
          if (!ws2.ok()) co_return ws2;
        }
      }
    };
    switch (cr.method) {
      case ImapOptions::Auth::kPlain:
        r = co_await sasl("PLAIN", imap::SaslPlain(cr.authzid, cr.user, cr.secret));
        break;
      case ImapOptions::Auth::kXoauth2:
        r = co_await sasl("XOAUTH2", imap::SaslXoauth2(cr.user, cr.secret));
        break;
      case ImapOptions::Auth::kLogin: {
        auto u = imap::Quote(cr.user), p = imap::Quote(cr.secret);
        if (!u || !p || c.Has("LOGINDISABLED")) {
          r = co_await sasl("PLAIN", imap::SaslPlain("", cr.user, cr.secret));
        } else {
          r = co_await c.Simple(fmt::format("LOGIN {} {}", *u, *p), nullptr, CommandTimeout());
        }
        break;
      }
    }
    if (!r.ok()) co_return r.status();
    if (r->status != "OK") {
      // Only the server's words: never what we sent.
      co_return Status::InvalidArgument(fmt::format("login refused: {} {}{}", r->status,
                                                    r->code.empty() ? "" : "[" + r->code + "] ", r->text));
    }
    if (r->code.rfind("CAPABILITY", 0) != 0) {
      auto cap = co_await c.Simple("CAPABILITY", nullptr, CommandTimeout());
      if (!cap.ok()) co_return cap.status();
    }
    co_return Status::Ok();
  }

  // LIST the folder (and learn the delimiter); CREATE it when missing.
  awaitable<Result<std::string>> EnsureFolder(Conn& c, bool create) {
    std::vector<Response> untagged;
    auto r = co_await c.Simple("LIST \"\" \"\"", &untagged, CommandTimeout());
    if (!r.ok()) co_return r.status();
    std::string delim = "/";
    for (const auto& u : untagged) {
      if (auto e = imap::ParseList(u.line)) delim = e->delimiter.empty() ? "/" : e->delimiter;
    }
    for (const auto& l : levels_) {
      if (delim.size() == 1 && l.find(delim[0]) != std::string::npos) {
        co_return Status::InvalidArgument(fmt::format(
            "folder level '{}' holds the server's hierarchy delimiter '{}'; use '/' between levels", l, delim));
      }
    }
    const std::string name = imap::MailboxName(levels_, delim);
    auto quoted = imap::Quote(name);
    if (!quoted) co_return Status::InvalidArgument("folder name cannot be quoted");
    untagged.clear();
    r = co_await c.Simple(fmt::format("LIST \"\" {}", *quoted), &untagged, CommandTimeout());
    if (!r.ok()) co_return r.status();
    bool exists = false;
    for (const auto& u : untagged) {
      auto e = imap::ParseList(u.line);
      if (!e || e->name != name) continue;
      bool selectable = true;
      for (const auto& f : e->flags) {
        std::string fu = core::AsciiLower(f);
        if (fu == "\\noselect" || fu == "\\nonexistent") selectable = false;
      }
      exists = selectable;
    }
    if (!exists) {
      if (!create) co_return std::string();  // nothing there (probes)
      r = co_await c.Simple(fmt::format("CREATE {}", *quoted), nullptr, CommandTimeout());
      if (!r.ok()) co_return r.status();
      // Another connection may have created it meanwhile: [ALREADYEXISTS] is fine.
      if (r->status != "OK" && r->code.rfind("ALREADYEXISTS", 0) != 0) {
        co_return Status::InvalidArgument(fmt::format("CREATE {} refused: {} {}", name, r->status, r->text));
      }
    }
    co_return name;
  }

  awaitable<Result<uint32_t>> Select(Conn& c, const std::string& name, uint32_t* exists) {
    std::vector<Response> untagged;
    auto r = co_await c.Simple(fmt::format("SELECT {}", *imap::Quote(name)), &untagged, CommandTimeout());
    if (!r.ok()) co_return r.status();
    if (r->status != "OK") {
      co_return Status::InvalidArgument(fmt::format("SELECT {} refused: {} {}", name, r->status, r->text));
    }
    uint32_t validity = 0;
    for (const auto& u : untagged) {
      if (auto v = imap::ParseUidValidity(u.code)) validity = *v;
      if (u.status == "EXISTS") *exists = static_cast<uint32_t>(u.number);
    }
    co_return validity;
  }

  // Takes the next command's jobs from the queue: one probe, or a batch of
  // appends bounded by count, bytes and APPENDLIMIT.
  std::vector<Job> TakeBatch(Mbox& mb, const Conn& c, uint64_t append_limit) {
    std::vector<Job> out;
    if (mb.queue.empty()) return out;
    if (mb.queue.front().kind != Job::Kind::kAppend) {
      out.push_back(std::move(mb.queue.front()));
      mb.queue.pop_front();
      return out;
    }
    const bool multi = c.Has("MULTIAPPEND");
    uint64_t bytes = 0;
    while (!mb.queue.empty() && mb.queue.front().kind == Job::Kind::kAppend) {
      Job& j = mb.queue.front();
      const uint64_t size = j.d.bytes ? j.d.bytes->size() : 0;
      if (append_limit != 0 && size > append_limit) {
        Job bad = std::move(j);
        mb.queue.pop_front();
        bad.done(bad.d.id, Completion::ItemBad(Status::TooLarge(fmt::format(
                               "{} bytes, over the server's APPENDLIMIT of {}", size, append_limit))));
        continue;
      }
      if (!out.empty() && (!multi || j.solo || out.front().solo || out.size() >= o_.batch_max_messages ||
                           bytes + size > o_.batch_max_bytes)) {
        break;
      }
      bytes += size;
      out.push_back(std::move(j));
      mb.queue.pop_front();
      if (out.front().solo) break;
    }
    return out;
  }

  // Sends one APPEND (one or several messages), handling synchronizing
  // literals by reading responses (and dispatching them) while it waits.
  // A server may answer the command (tagged NO, BAD) instead of the "+"
  // for a synchronizing literal: the command is over then (read_one
  // completed its jobs and erased f), *answered_early is set, and nothing
  // more of it is sent. `answered` is the tag read_one answered last.
  awaitable<Status> SendAppend(Conn& c, InFlight& f, const std::string& folder,
                               const std::function<awaitable<Status>(bool*)>& read_one,
                               const std::string& answered, bool* answered_early) {
    f.tag = c.NextTag();
    const std::string tag = f.tag;
    const bool plus = c.Has("LITERAL+");
    const bool minus = c.Has("LITERAL-");
    std::string head = fmt::format("{} APPEND {}", f.tag, *imap::Quote(folder));
    // Non-synchronizing literals are gathered and written together (one
    // sendmsg per 64 buffers): a write per message made the server wake and
    // read once per message (Dovecot's system CPU doubled, measured).
    std::vector<asio::const_buffer> gathered;
    uint64_t gathered_bytes = 0;
    auto flush = [&]() -> awaitable<Status> {
      if (gathered.empty()) co_return Status::Ok();
      Status s = co_await c.Write(gathered, CommandTimeout(gathered_bytes));
      gathered.clear();
      gathered_bytes = 0;
      co_return s;
    };
    for (size_t i = 0; i < f.jobs.size(); ++i) {
      const std::string& bytes = *f.jobs[i].d.bytes;
      const bool nonsync = plus || (minus && bytes.size() <= 4096);
      // f.pieces is a deque: what it holds stays put while it grows.
      f.pieces.push_back(fmt::format("{} (\\Seen) \"{}\" {{{}{}}}\r\n", i == 0 ? head : std::string(),
                                     imap::InternalDate(f.jobs[i].d.msgtime_ms), bytes.size(),
                                     nonsync ? "+" : ""));
      if (!nonsync) {
        // Synchronizing: what was gathered, the announcement, then the server's "+".
        Status s = co_await flush();
        if (!s.ok()) co_return s;
        s = co_await c.Write(f.pieces.back(), CommandTimeout());
        if (!s.ok()) co_return s;
        bool continued = false;
        while (!continued) {
          Status rs = co_await read_one(&continued);
          if (!rs.ok()) co_return rs;
          if (answered == tag) {  // f is gone: touch nothing of it
            *answered_early = true;
            co_return Status::Ok();
          }
        }
        std::vector<asio::const_buffer> b{asio::buffer(bytes)};
        s = co_await c.Write(b, CommandTimeout(bytes.size()));
        if (!s.ok()) co_return s;
        continue;
      }
      gathered.push_back(asio::buffer(f.pieces.back()));
      gathered.push_back(asio::buffer(bytes));
      gathered_bytes += f.pieces.back().size() + bytes.size();
      if (gathered_bytes >= (4u << 20)) {
        Status s = co_await flush();
        if (!s.ok()) co_return s;
      }
    }
    static const std::string kEnd = "\r\n";
    gathered.push_back(asio::buffer(kEnd));
    gathered_bytes += kEnd.size();
    Status s = co_await flush();
    if (!s.ok()) co_return s;
    f.fully_sent = true;
    co_return Status::Ok();
  }

  awaitable<Status> SendProbe(Conn& c, InFlight& f) {
    f.tag = c.NextTag();
    const std::string id = "<" + f.jobs[0].d.message_id + ">";
    f.pieces.push_back(fmt::format("{} UID SEARCH HEADER Message-ID {}\r\n", f.tag, *imap::Quote(id)));
    Status s = co_await c.Write(f.pieces.back(), CommandTimeout());
    if (s.ok()) f.fully_sent = true;
    co_return s;
  }

  // The tagged answer of an APPEND. Returns true when the folder is gone
  // (the connection then reconnects and creates it again).
  bool CompleteAppend(Mbox& mb, InFlight& f, const Response& r) {
    if (r.status == "OK") {
      auto uid = imap::ParseAppendUid(r.code);
      for (size_t i = 0; i < f.jobs.size(); ++i) {
        std::string ref;
        if (uid && i < uid->uids.size()) ref = fmt::format("{}:{}", uid->uidvalidity, uid->uids[i]);
        f.jobs[i].done(f.jobs[i].d.id, Completion::Done(std::move(ref)));
      }
      return false;
    }
    const std::string why = fmt::format("{} {}{}", r.status, r.code.empty() ? "" : "[" + r.code + "] ", r.text);
    const std::string code = r.code.substr(0, r.code.find(' '));
    if (imap::IsTemporary(r)) {
      auto after = imap::SuggestedBackoff(r.text).value_or(std::chrono::milliseconds(1000));
      mb.not_before = std::max(mb.not_before, Clock::now() + after);  // the whole mailbox waits
      for (auto& j : f.jobs) j.done(j.d.id, Completion::Transient(Status::IOError(why), after, false));
      return false;
    }
    if (code == "OVERQUOTA") {
      mb.bad = true;
      mb.why = Status::InvalidArgument(why);
      for (auto& j : f.jobs) j.done(j.d.id, Completion::MailboxBad(mb.why));
      return false;
    }
    if (code == "TRYCREATE" || code == "NONEXISTENT") {
      // The folder went away under us: the next connection creates it again.
      for (auto it = f.jobs.rbegin(); it != f.jobs.rend(); ++it) mb.queue.push_front(std::move(*it));
      return true;
    }
    if (f.jobs.size() > 1) {
      // MULTIAPPEND is all or nothing: send each alone to find the refused one.
      for (auto it = f.jobs.rbegin(); it != f.jobs.rend(); ++it) {
        it->solo = true;
        mb.queue.push_front(std::move(*it));
      }
      return false;
    }
    f.jobs[0].done(f.jobs[0].d.id, Completion::ItemBad(Status::InvalidArgument(fmt::format("server refused it: {}", why))));
    return false;
  }

  awaitable<Status> SendInventory(Conn& c, InFlight& f, uint32_t exists) {
    if (exists == 0) {
      // "1:*" on an empty folder is an error on some servers: nothing to fetch.
      f.jobs[0].inventory_done(std::vector<std::string>{});
      f.jobs.clear();
      co_return Status::Ok();
    }
    f.tag = c.NextTag();
    f.pieces.push_back(fmt::format("{} UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])\r\n", f.tag));
    Status s = co_await c.Write(f.pieces.back(), CommandTimeout());
    if (s.ok()) f.fully_sent = true;
    co_return s;
  }

  void CompleteInventory(InFlight& f, const Response& r) {
    if (r.status == "OK") {
      f.jobs[0].inventory_done(std::move(f.ids));
    } else {
      f.jobs[0].inventory_done(Status::IOError(fmt::format("UID FETCH refused: {} {}", r.status, r.text)));
    }
  }

  void CompleteProbe(Mbox& mb, InFlight& f, const Response& r) {
    ProbeResult res;
    if (r.status == "OK") {
      if (f.search.empty()) {
        res.kind = ProbeResult::Kind::kAbsent;
      } else {
        res.kind = ProbeResult::Kind::kPresent;
        res.remote_ref = fmt::format("{}:{}", mb.uidvalidity, f.search.front());
      }
    } else {
      res.kind = ProbeResult::Kind::kFailed;
      res.error = Status::IOError(fmt::format("UID SEARCH refused: {} {}", r.status, r.text));
    }
    f.jobs[0].probe_done(f.jobs[0].d.id, std::move(res));
  }

  // What a dying connection leaves: sent commands without an answer are in
  // doubt (the engine probes before resending); unsent ones go back.
  // A command of this mailbox left flight (answered, or its connection
  // ended). When none is left and work waits, a held-back connection of
  // this mailbox (see RunConnection) takes it now.
  void CommandsAnswered(Mbox& mb, size_t n) {
    mb.commands_out -= std::min(n, mb.commands_out);
    if (mb.commands_out == 0 && !mb.queue.empty() && !mb.idle.empty()) mb.idle.back()->cancel();
  }

  void AbandonInFlight(Mbox& mb, std::list<InFlight>& inflight, const Status& why) {
    Trace(this, "abandon", fmt::format("{} {} commands: {}", mb.addr, inflight.size(), why.ToString()));
    const size_t n = inflight.size();
    for (auto f = inflight.rbegin(); f != inflight.rend(); ++f) {
      if (f->fully_sent) {
        for (auto& j : f->jobs) {
          if (j.kind == Job::Kind::kInventory) {
            j.inventory_done(why);
          } else if (j.kind == Job::Kind::kAppend) {
            j.done(j.d.id, Completion::Transient(why, std::chrono::milliseconds(0), true));
          } else {
            mb.queue.push_front(std::move(j));  // a search is safe to repeat
          }
        }
      } else {
        for (auto j = f->jobs.rbegin(); j != f->jobs.rend(); ++j) mb.queue.push_front(std::move(*j));
      }
    }
    inflight.clear();
    CommandsAnswered(mb, n);
  }

  awaitable<Outcome> RunConnection(std::string addr) {
    Conn c(io_, ssl_);
    Outcome out;
    Status s = co_await OpenConn(c);
    if (!s.ok()) {
      c.Close();
      out.end = s.code() == Status::Code::kInvalidArgument ? End::kSinkBad : End::kConnectFailed;
      out.error = s;
      co_return out;
    }
    auto cred = co_await CredentialsFor(addr);
    if (!cred.ok()) {
      c.Close();
      out.end = cred.status().code() == Status::Code::kInvalidArgument ? End::kMailboxBad : End::kConnectFailed;
      out.error = cred.status().WithContext(fmt::format("mailbox {}", addr));
      co_return out;
    }
    s = co_await Login(c, *cred);
    if (!s.ok()) {
      c.Close();
      out.end = s.code() == Status::Code::kInvalidArgument ? End::kMailboxBad : End::kConnectFailed;
      out.error = s.WithContext(fmt::format("mailbox {}", addr));
      co_return out;
    }
    ++auth_successes_;
    out.logged_in = true;
    consecutive_connect_failures_ = 0;
    bool folder_gone = false;
    auto folder = co_await EnsureFolder(c, true);
    uint32_t exists = 0;
    // No co_await inside ?: anywhere in this file: GCC 12 mis-compiles it.
    Result<uint32_t> validity = uint32_t{0};
    if (folder.ok()) {
      validity = co_await Select(c, *folder, &exists);
    } else {
      validity = folder.status();
    }
    if (!validity.ok()) {
      c.Close();
      out.end = validity.status().code() == Status::Code::kInvalidArgument ? End::kMailboxBad : End::kLost;
      out.error = validity.status().WithContext(fmt::format("mailbox {}", addr));
      co_return out;
    }
    {
      Mbox& mb = mbox(addr);
      mb.uidvalidity = *validity;
      mb.failures = 0;
    }
    uint64_t append_limit = 0;
    for (const auto& cap : c.caps()) {
      if (cap.rfind("APPENDLIMIT=", 0) == 0) append_limit = std::strtoull(cap.c_str() + 12, nullptr, 10);
    }

    // A list: the command being sent (SendAppend holds it) stays put while
    // read_one erases others that are answered meanwhile.
    std::list<InFlight> inflight;
    std::string answered_tag;  // the last command read_one answered (and erased)
    std::string last_search_line;
    // Reads one response and dispatches it; sets *continued on "+".
    std::function<awaitable<Status>(bool*)> read_one = [&](bool* continued) -> awaitable<Status> {
      auto r = co_await c.Read(CommandTimeout());
      if (!r.ok()) co_return r.status();
      if (r->kind == Response::Kind::kContinuation) {
        if (continued != nullptr) *continued = true;
        co_return Status::Ok();
      }
      if (r->kind == Response::Kind::kUntagged) {
        if (r->status == "BYE") co_return Status::IOError(fmt::format("server closed the connection: {}", r->text));
        if (r->status == "EXISTS") exists = static_cast<uint32_t>(r->number);
        if (r->status == "FETCH") {
          for (auto& f : inflight) {
            if (f.jobs.front().kind != Job::Kind::kInventory) continue;
            // The literal is spliced after "}\r\n": the header fields asked for.
            size_t at = r->line.find("}\r\n");
            auto id = MessageIdOfHeader(at == std::string::npos ? std::string_view() : std::string_view(r->line).substr(at + 3));
            if (id) f.ids.push_back(std::move(*id));
            break;
          }
        }
        if (r->status == "SEARCH") {
          for (auto& f : inflight) {
            if (f.jobs.front().kind == Job::Kind::kProbe && f.fully_sent && !f.searched) {
              f.search = imap::ParseSearch(r->line);
              f.searched = true;
              break;
            }
          }
        }
        co_return Status::Ok();
      }
      for (auto it = inflight.begin(); it != inflight.end(); ++it) {
        if (it->tag != r->tag) continue;
        Mbox& mb = mbox(addr);
        if (it->jobs.front().kind == Job::Kind::kInventory) {
          CompleteInventory(*it, *r);
        } else if (it->jobs.front().kind == Job::Kind::kProbe) {
          CompleteProbe(mb, *it, *r);
        } else if (CompleteAppend(mb, *it, *r)) {
          folder_gone = true;
        }
        answered_tag = it->tag;
        inflight.erase(it);
        CommandsAnswered(mb, 1);
        break;
      }
      co_return Status::Ok();
    };

    Status lost;
    asio::steady_timer idle(io_);
    while (true) {
      Mbox& mb = mbox(addr);
      if (sink_bad_ || mb.bad) break;
      // Fill the window.
      bool held = false;
      while (inflight.size() < o_.max_commands_in_flight && Clock::now() >= mb.not_before && !folder_gone) {
        // While a command of this mailbox is out (on any of its
        // connections), another goes only when a full batch waits: the
        // server commits once per APPEND (Dovecot: a transaction, an index
        // sync, fsyncs), so fuller batches cost it much less (measured: a
        // third of Dovecot's CPU). Nothing lingers: when the last answer
        // comes, what waits goes (CommandsAnswered wakes a held connection).
        if (mb.commands_out > 0 && mb.queue.size() < o_.batch_max_messages && !closing_) {
          held = true;
          break;
        }
        std::vector<Job> jobs = TakeBatch(mb, c, append_limit);
        if (jobs.empty()) break;
        ++mb.commands_out;
        inflight.emplace_back();
        InFlight& f = inflight.back();
        f.jobs = std::move(jobs);
        const Job::Kind k = f.jobs.front().kind;
        if (k == Job::Kind::kProbe) {
          lost = co_await SendProbe(c, f);
        } else if (k == Job::Kind::kInventory) {
          lost = co_await SendInventory(c, f, exists);
        } else {
          bool answered_early = false;
          lost = co_await SendAppend(c, f, *folder, read_one, answered_tag, &answered_early);
          if (lost.ok() && answered_early) continue;  // f is answered and gone
        }
        if (!lost.ok()) break;
        if (f.jobs.empty()) {  // answered at once
          inflight.pop_back();
          CommandsAnswered(mbox(addr), 1);
        }
      }
      if (!lost.ok()) break;
      if (!inflight.empty()) {
        lost = co_await read_one(nullptr);
        if (!lost.ok()) break;
        continue;
      }
      if (folder_gone) break;  // reconnect and create the folder again
      Mbox& m = mbox(addr);
      if (!m.queue.empty() && Clock::now() < m.not_before) {
        idle.expires_at(m.not_before);  // throttled: wait, then go on
        boost::system::error_code ec;
        co_await idle.async_wait(asio::redirect_error(use_awaitable, ec));
        continue;
      }
      if (!m.queue.empty() && !held) continue;
      if (closing_ || release_idle_ || !wanting_.empty()) {
        release_idle_ = false;
        break;
      }
      // Idle: wait for work, then log out.
      idle.expires_after(std::chrono::milliseconds(o_.idle_close_ms));
      m.idle.push_back(&idle);
      boost::system::error_code ec;
      co_await idle.async_wait(asio::redirect_error(use_awaitable, ec));
      Mbox& m2 = mbox(addr);
      m2.idle.erase(std::remove(m2.idle.begin(), m2.idle.end(), &idle), m2.idle.end());
      if (m2.queue.empty()) {
        release_idle_ = false;
        break;
      }
    }
    if (!lost.ok()) {
      if (c.timed_out()) lost = Status::IOError(fmt::format("no answer within the timeout: {}", lost.message()));
      AbandonInFlight(mbox(addr), inflight, lost);
      c.Close();
      out.end = End::kLost;
      out.error = lost;
      co_return out;
    }
    AbandonInFlight(mbox(addr), inflight, Status::Aborted("connection closed"));
    (void)co_await c.Simple("LOGOUT", nullptr, std::chrono::seconds(5));
    c.Close();
    out.end = End::kIdle;
    co_return out;
  }

  // Mailbox checks: one login each, within the connection limit.
  void PumpChecks() {
    while (!checks_.empty() && total_conns_ < o_.connections) {
      Check ch = std::move(checks_.front());
      checks_.pop_front();
      ++total_conns_;
      asio::co_spawn(io_, RunCheck(ch.mailbox), [this, ch](std::exception_ptr e, MailboxVerdict v) {
        --total_conns_;
        ch.done(ch.mailbox, e ? MailboxVerdict::kUnknowable : v);
        PumpChecks();
        if (total_conns_ == 0 && on_all_closed_) {
          auto cb = std::move(on_all_closed_);
          on_all_closed_ = nullptr;
          cb();
        }
      });
    }
  }

  awaitable<MailboxVerdict> RunCheck(std::string addr) {
    Conn c(io_, ssl_);
    Status s = co_await OpenConn(c);
    if (!s.ok()) {
      c.Close();
      co_return MailboxVerdict::kUnknowable;
    }
    auto cred = co_await CredentialsFor(addr);
    if (!cred.ok()) {
      c.Close();
      co_return cred.status().code() == Status::Code::kInvalidArgument ? MailboxVerdict::kUnknown
                                                                       : MailboxVerdict::kUnknowable;
    }
    s = co_await Login(c, *cred);
    MailboxVerdict v = s.ok() ? MailboxVerdict::kKnown
                              : s.code() == Status::Code::kInvalidArgument ? MailboxVerdict::kUnknown
                                                                           : MailboxVerdict::kUnknowable;
    if (s.ok()) (void)co_await c.Simple("LOGOUT", nullptr, std::chrono::seconds(5));
    c.Close();
    co_return v;
  }

  Target target_;
  ImapOptions o_;
  std::vector<std::string> levels_;
  asio::io_context io_;
  ssl::context ssl_;
  asio::thread_pool pool_;  // blocking helpers (token command)
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread thread_;
  std::mt19937_64 rng_{std::random_device{}()};
  // I/O thread only from here on.
  std::unordered_map<std::string, Mbox> mboxes_;
  std::deque<std::string> wanting_;
  std::deque<Check> checks_;
  size_t total_conns_ = 0;
  uint32_t consecutive_connect_failures_ = 0;
  uint32_t auth_successes_ = 0;
  uint32_t auth_failures_ = 0;
  bool sink_bad_ = false;
  Status sink_error_;
  bool closing_ = false;
  bool release_idle_ = false;
  std::function<void()> on_all_closed_;
  std::map<std::string, std::pair<std::string, Clock::time_point>> tokens_;
};

}  // namespace

Result<std::unique_ptr<Sink>> MakeImapSink(const Target& target, ImapOptions options) {
  if (target.kind != Target::Kind::kImap && target.kind != Target::Kind::kImaps) {
    return Status::InvalidArgument(fmt::format("'{}' is not an IMAP target", target.spec));
  }
  return std::unique_ptr<Sink>(new ImapSink(target, std::move(options)));
}

}  // namespace wxa::sinks
