#include "tests/imap/fault_proxy.h"

#include <algorithm>
#include <array>
#include <boost/asio.hpp>
#include <cctype>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "tests/imap/imap_test_client.h"

namespace wxa::test {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

const char* FaultKindName(FaultKind k) {
  switch (k) {
    case FaultKind::kResetInLiteral: return "reset-in-literal";
    case FaultKind::kStallReplies: return "stall-replies";
    case FaultKind::kByeAfterOk: return "bye-after-ok";
    case FaultKind::kByeBeforeForward: return "bye-before-forward";
    case FaultKind::kReject: return "reject";
    case FaultKind::kRejectConnection: return "reject-connection";
  }
  return "?";
}

FaultRule FaultRule::ResetInLiteral(uint64_t nth, uint64_t after_bytes) {
  FaultRule r;
  r.kind = FaultKind::kResetInLiteral;
  r.nth = nth;
  r.after_bytes = after_bytes;
  return r;
}
FaultRule FaultRule::Stall(uint64_t nth, std::chrono::milliseconds d) {
  FaultRule r;
  r.kind = FaultKind::kStallReplies;
  r.nth = nth;
  r.stall = d;
  return r;
}
FaultRule FaultRule::ByeAfterOk(uint64_t nth) {
  FaultRule r;
  r.kind = FaultKind::kByeAfterOk;
  r.nth = nth;
  return r;
}
FaultRule FaultRule::ByeBeforeForward(uint64_t nth) {
  FaultRule r;
  r.kind = FaultKind::kByeBeforeForward;
  r.nth = nth;
  return r;
}
FaultRule FaultRule::RejectLimit(uint64_t nth, uint64_t times) {
  FaultRule r;
  r.kind = FaultKind::kReject;
  r.nth = nth;
  r.times = times;
  r.response = "NO [LIMIT] Message too large (injected)";
  return r;
}
FaultRule FaultRule::Unavailable(uint64_t nth, uint64_t times) {
  FaultRule r = RejectLimit(nth, times);
  r.response = "NO [UNAVAILABLE] Server busy, try again later (injected)";
  return r;
}
FaultRule FaultRule::ExchangeThrottle(uint64_t nth, uint64_t times, int backoff_ms) {
  FaultRule r = RejectLimit(nth, times);
  r.response = "BAD Request is throttled. Suggested Backoff Time: " + std::to_string(backoff_ms) +
               " milliseconds";
  return r;
}
FaultRule FaultRule::RejectConnection(uint64_t nth, uint64_t times) {
  FaultRule r;
  r.kind = FaultKind::kRejectConnection;
  r.nth = nth;
  r.times = times;
  return r;
}

namespace {

constexpr size_t kReadChunk = 64 * 1024;
// RFC 7888: LITERAL- allows non-synchronizing literals up to this size.
constexpr uint64_t kLiteralMinusMax = 4096;

std::string Upper(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string_view StripCrlf(std::string_view line) {
  if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

struct Literal {
  uint64_t size = 0;
  bool nonsync = false;
};

// "{n}", "{n+}" or "~{n}" ending a line (CRLF removed).
std::optional<Literal> TrailingLiteral(std::string_view body) {
  if (body.empty() || body.back() != '}') return std::nullopt;
  size_t open = body.rfind('{');
  if (open == std::string_view::npos) return std::nullopt;
  std::string_view inner = body.substr(open + 1, body.size() - open - 2);
  Literal lit;
  if (!inner.empty() && inner.back() == '+') {
    lit.nonsync = true;
    inner.remove_suffix(1);
  }
  if (inner.empty() || inner.size() > 19) return std::nullopt;
  for (char c : inner) {
    if (c < '0' || c > '9') return std::nullopt;
    lit.size = lit.size * 10 + static_cast<uint64_t>(c - '0');
  }
  return lit;
}

// The first astring of `s` (atom or quoted string); nullopt for a literal.
std::optional<std::string> FirstAstring(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  if (s.empty() || s.front() == '{') return std::nullopt;
  std::string out;
  if (s.front() == '"') {
    for (size_t i = 1; i < s.size() && s[i] != '"'; ++i) {
      if (s[i] == '\\' && i + 1 < s.size()) ++i;
      out.push_back(s[i]);
    }
    return out;
  }
  size_t end = s.find(' ');
  return std::string(s.substr(0, end));
}

bool AnyMatches(const std::vector<std::string>& patterns, std::string_view cap) {
  return std::any_of(patterns.begin(), patterns.end(),
                     [&](const std::string& p) { return CapabilityMatches(cap, p); });
}

}  // namespace

// ---------------------------------------------------------------------------

struct AppendDecision {
  bool bye_before = false;
  bool reject = false;
  std::string reject_response;
  bool reset = false;
  uint64_t reset_after = 0;
  bool bye_after_ok = false;
  bool stall = false;
  std::chrono::milliseconds stall_for{0};
  std::string bye_text;
};

class Session;

struct FaultProxy::Impl {
  FaultProxyOptions opt;  // the rule and capability fields are guarded by mu
  mutable std::mutex mu;
  mutable std::condition_variable cv;
  FaultProxyCounters counters;  // guarded by mu
  uint64_t append_seq = 0;      // guarded by mu
  std::map<std::string, uint64_t> user_append_seq;  // guarded by mu
  uint64_t connection_seq = 0;                      // guarded by mu
  uint16_t port = 0;
  std::vector<std::weak_ptr<Session>> sessions;  // I/O thread only
  std::thread thread;
  // Destroyed first (reverse order), with the handlers and sessions they
  // own, while the members above are still alive.
  asio::io_context io;
  std::optional<tcp::acceptor> acceptor;  // uses io: declared after it

  void Accept();
  AppendDecision DecideAppend(const std::string& user);
  std::optional<std::string> DecideConnection();
  void Fired(FaultKind k);
  void Count(uint64_t FaultProxyCounters::*field, uint64_t n = 1) {
    std::lock_guard<std::mutex> l(mu);
    counters.*field += n;
  }
  struct CapView {
    std::vector<std::string> hide, add;
    bool enforce = true;
  };
  CapView Caps() const {
    std::lock_guard<std::mutex> l(mu);
    return CapView{opt.hide_capabilities, opt.add_capabilities, opt.enforce_hidden};
  }
};

// One client connection and its upstream connection. Lives in the I/O
// thread; kept alive by the handlers that reference it.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(FaultProxy::Impl* proxy, tcp::socket client)
      : p_(proxy), client_(std::move(client)), server_(proxy->io), hold_timer_(proxy->io) {}

  void Start() {
    auto self = shared_from_this();
    tcp::endpoint ep(asio::ip::address_v4::loopback(), p_->opt.upstream_port);
    server_.async_connect(ep, [self](const error_code& ec) {
      if (self->closed_) return;
      if (ec) {
        self->SendClient("* BYE FaultProxy: upstream unreachable: " + ec.message() + "\r\n");
        self->CloseGracefully();
        return;
      }
      self->server_.set_option(tcp::no_delay(true));
      self->ReadServer();
      self->ReadClient();
    });
  }

  // Resets the client and closes upstream (a crash, as the client sees it).
  void Abort() { Close(/*reset_client=*/true); }

 private:
  struct Command {
    std::string tag;
    std::string name;
    bool is_append = false;
    bool catenate = false;
    bool starttls = false;
    bool swallow = false;  // dropped, not forwarded, up to its end
    bool reset_armed = false;
    uint64_t reset_after = 0;
    uint64_t literal_bytes = 0;
    int literals = 0;
    bool bye_after_ok = false;
    bool stall = false;
    std::chrono::milliseconds stall_for{0};
    std::string bye_text;
  };
  struct Pending {
    std::string tag;
    bool injected = false;  // `line` is our reply, sent when it reaches the front
    std::string line;
    bool bye_after_ok = false;
    bool stall = false;
    std::chrono::milliseconds stall_for{0};
    bool starttls = false;
    std::string bye_text;
  };
  struct Out {
    std::deque<std::string> queue;
    size_t bytes = 0;
    bool writing = false;
    std::vector<std::string> batch;
  };
  enum class Mode : uint8_t { kLine, kLiteral, kOpaque };

  // ---- client -> server ----
  bool ClientPaused() const {
    return closed_ || wait_quiet_ || bye_before_pending_ || !pause_until_tag_.empty();
  }

  void ReadClient() {
    if (c_reading_ || closed_ || c_eof_ || ClientPaused()) return;
    if (to_server_.bytes >= p_->opt.max_buffered_bytes) return;
    c_reading_ = true;
    auto self = shared_from_this();
    client_.async_read_some(asio::buffer(c_buf_), [self](const error_code& ec, size_t n) {
      self->c_reading_ = false;
      if (self->closed_) return;
      if (ec) {
        self->OnClientGone(ec);
        return;
      }
      self->c_in_.append(self->c_buf_.data(), n);
      self->ProcessClient();
      self->ReadClient();
    });
  }

  void OnClientGone(const error_code& ec) {
    if (ec == asio::error::eof) {
      // Half-close: what the client sent still reaches the server.
      c_eof_ = true;
      if (to_server_.queue.empty() && !to_server_.writing) ShutdownServer();
      return;
    }
    Close(/*reset_client=*/false);
  }

  void ProcessClient() {
    while (!ClientPaused() && c_pos_ < c_in_.size()) {
      if (c_mode_ == Mode::kOpaque) {
        SendServer(c_in_.substr(c_pos_));
        c_pos_ = c_in_.size();
        break;
      }
      if (c_mode_ == Mode::kLiteral) {
        if (!ClientLiteralData()) break;
        continue;
      }
      size_t nl = c_in_.find('\n', c_pos_);
      if (nl == std::string::npos) {
        if (c_in_.size() - c_pos_ > p_->opt.max_line_bytes) Close(false);
        break;
      }
      std::string line = c_in_.substr(c_pos_, nl + 1 - c_pos_);
      c_pos_ = nl + 1;
      OnClientLine(std::move(line));
    }
    if (c_pos_ > 0 && (c_pos_ == c_in_.size() || c_pos_ > kReadChunk)) {
      c_in_.erase(0, c_pos_);
      c_pos_ = 0;
    }
  }

  // Returns false when the session ended.
  bool ClientLiteralData() {
    uint64_t n = std::min<uint64_t>(c_lit_left_, c_in_.size() - c_pos_);
    if (!cmd_.swallow) {
      if (cmd_.reset_armed && n >= cmd_.reset_after - cmd_.literal_bytes) {
        uint64_t allowed = cmd_.reset_after - cmd_.literal_bytes;
        if (allowed > 0) ForwardLiteral(c_in_.substr(c_pos_, allowed));
        p_->Fired(FaultKind::kResetInLiteral);
        Close(/*reset_client=*/true);
        return false;
      }
      ForwardLiteral(c_in_.substr(c_pos_, n));
    }
    c_lit_left_ -= n;
    c_pos_ += n;
    if (c_lit_left_ == 0) c_mode_ = Mode::kLine;
    return true;
  }

  void ForwardLiteral(std::string bytes) {
    cmd_.literal_bytes += bytes.size();
    if (cmd_.is_append) p_->Count(&FaultProxyCounters::append_literal_bytes_forwarded, bytes.size());
    SendServer(std::move(bytes));
  }

  void OnClientLine(std::string line) {
    if (in_command_) {
      ContinueCommand(std::move(line));
      return;
    }
    std::string_view body = StripCrlf(line);
    if (!continuation_tag_.empty()) {
      // A SASL response or IDLE's DONE: not a command.
      if (sasl_plain_pending_) {
        sasl_plain_pending_ = false;
        NoteSaslPlain(body);
      }
      SendServer(std::move(line));
      return;
    }
    StartCommand(std::move(line));
  }

  void NoteSaslPlain(std::string_view b64) {
    auto blob = Base64Decode(b64);
    if (!blob) return;
    size_t z1 = blob->find('\0');
    if (z1 == std::string::npos) return;
    size_t z2 = blob->find('\0', z1 + 1);
    std::string authzid = blob->substr(0, z1);
    std::string authcid = blob->substr(z1 + 1, z2 == std::string::npos ? std::string::npos : z2 - z1 - 1);
    SetUser(authzid.empty() ? authcid : authzid);
  }

  void SetUser(std::string u) {
    const std::string& sep = p_->opt.master_separator;
    if (!sep.empty()) {
      size_t s = u.find(sep);
      if (s != std::string::npos) u.resize(s);
    }
    user_ = std::move(u);
  }

  void StartCommand(std::string line) {
    std::string_view body = StripCrlf(line);
    cmd_ = Command{};
    size_t sp = body.find(' ');
    cmd_.tag = std::string(body.substr(0, sp));
    std::string_view rest = sp == std::string_view::npos ? "" : body.substr(sp + 1);
    size_t sp2 = rest.find(' ');
    cmd_.name = Upper(rest.substr(0, sp2));
    std::string_view args = sp2 == std::string_view::npos ? "" : rest.substr(sp2 + 1);

    if (cmd_.name == "LOGIN") {
      if (auto u = FirstAstring(args)) SetUser(*u);
    } else if (cmd_.name == "AUTHENTICATE") {
      auto words = SplitWords(args);
      if (!words.empty() && Upper(words[0]) == "PLAIN") {
        if (words.size() > 1 && words[1] != "=") {
          NoteSaslPlain(words[1]);
        } else {
          sasl_plain_pending_ = true;
        }
      }
      continuation_tag_ = cmd_.tag;
    } else if (cmd_.name == "IDLE") {
      continuation_tag_ = cmd_.tag;
    } else if (cmd_.name == "STARTTLS") {
      auto caps = p_->Caps();
      if (caps.enforce && AnyMatches(caps.hide, "STARTTLS")) {
        // Hidden so a client stays in plaintext, where faults can be
        // injected; a client that tries anyway is told no.
        p_->Count(&FaultProxyCounters::enforced);
        InjectReply(cmd_.tag, cmd_.tag + " BAD STARTTLS is not advertised (FaultProxy)\r\n");
        in_command_ = false;
        return;
      }
      cmd_.starttls = true;
    } else if (cmd_.name == "APPEND") {
      cmd_.is_append = true;
      cmd_.catenate = Upper(body).find("CATENATE") != std::string::npos;
      AppendDecision d = p_->DecideAppend(user_);
      if (d.bye_before) {
        // Nothing of this command reaches the server; earlier commands are
        // answered first so what they stored is settled.
        bye_text_ = d.bye_text;
        bye_before_pending_ = true;
        in_command_ = false;
        MaybeUnblockClient();
        return;
      }
      if (d.reject) {
        p_->Fired(FaultKind::kReject);
        InjectReply(cmd_.tag, cmd_.tag + " " + d.reject_response + "\r\n");
        cmd_.swallow = true;
        FinishLine(body);
        return;
      }
      cmd_.reset_armed = d.reset;
      cmd_.reset_after = d.reset_after;
      cmd_.bye_after_ok = d.bye_after_ok;
      cmd_.stall = d.stall;
      cmd_.stall_for = d.stall_for;
      cmd_.bye_text = d.bye_text;
      if (d.reset && !pending_.empty()) {
        wait_quiet_ = true;
        held_line_ = std::move(line);
        return;
      }
    }
    ForwardCommandStart(std::move(line));
  }

  void ForwardCommandStart(std::string line) {
    std::string_view body = StripCrlf(line);
    if (cmd_.is_append) {
      auto lit = TrailingLiteral(body);
      if (lit && lit->nonsync && !NonSyncAllowed(lit->size)) {
        p_->Count(&FaultProxyCounters::enforced);
        InjectReply(cmd_.tag, cmd_.tag +
                                  " BAD [CLIENTBUG] Non-synchronizing literal not allowed: "
                                  "LITERAL+ is not advertised (FaultProxy)\r\n");
        cmd_.swallow = true;
        FinishLine(body);
        return;
      }
    }
    std::string body_copy(body);
    SendServer(std::move(line));
    if (cmd_.tag.empty()) {
      // No tag: the server answers with an untagged BAD; nothing to wait for.
      FinishLine(body_copy);
      return;
    }
    Pending pe;
    pe.tag = cmd_.tag;
    pe.bye_after_ok = cmd_.bye_after_ok;
    pe.stall = cmd_.stall;
    pe.stall_for = cmd_.stall_for;
    pe.starttls = cmd_.starttls;
    pe.bye_text = cmd_.bye_text;
    pending_.push_back(std::move(pe));
    FinishLine(body_copy);
  }

  void ContinueCommand(std::string line) {
    std::string_view body = StripCrlf(line);
    if (cmd_.swallow) {
      FinishLine(body);
      return;
    }
    if (cmd_.is_append && !cmd_.catenate) {
      auto caps = p_->Caps();
      std::string_view t = body;
      while (!t.empty() && t.front() == ' ') t.remove_prefix(1);
      bool another_message = !t.empty();
      auto lit = TrailingLiteral(body);
      bool refuse = (another_message && caps.enforce && AnyMatches(caps.hide, "MULTIAPPEND")) ||
                    (lit && lit->nonsync && !NonSyncAllowed(lit->size));
      if (refuse) {
        // The server already holds part of this command: end it with an
        // argument it must reject, so it answers BAD and stores nothing.
        p_->Count(&FaultProxyCounters::enforced);
        SendServer(" NIL\r\n");
        cmd_.swallow = true;
        FinishLine(body);
        return;
      }
    }
    std::string body_copy(body);
    SendServer(std::move(line));
    FinishLine(body_copy);
  }

  // After a command line: a literal follows, or the command is over.
  void FinishLine(std::string_view body) {
    auto lit = TrailingLiteral(body);
    if (lit) {
      if (cmd_.is_append) p_->Count(&FaultProxyCounters::append_messages);
      ++cmd_.literals;
      if (cmd_.swallow && !lit->nonsync) {
        // The client waits for "+", which never comes: it gets the tagged
        // reply instead and abandons the command (RFC 3501 7.5).
        EndCommand();
        return;
      }
      c_mode_ = Mode::kLiteral;
      c_lit_left_ = lit->size;
      in_command_ = true;
      if (c_lit_left_ == 0) c_mode_ = Mode::kLine;
      return;
    }
    EndCommand();
  }

  void EndCommand() {
    in_command_ = false;
    if (cmd_.swallow) return;
    // STARTTLS: what follows the reply is TLS. ByeAfterOk: nothing after the
    // APPEND may reach the server, so the outcome is exactly "it is stored".
    if (cmd_.starttls || cmd_.bye_after_ok) pause_until_tag_ = cmd_.tag;
  }

  bool NonSyncAllowed(uint64_t size) {
    auto caps = p_->Caps();
    if (!caps.enforce) return true;
    bool hides_literal = AnyMatches(caps.hide, "LITERAL+") || AnyMatches(caps.hide, "LITERAL-");
    if (!hides_literal) return true;  // the server's own rules apply
    bool plus = (srv_literal_plus_ && !AnyMatches(caps.hide, "LITERAL+")) ||
                AnyMatches(caps.add, "LITERAL+");
    bool minus = (srv_literal_minus_ && !AnyMatches(caps.hide, "LITERAL-")) ||
                 AnyMatches(caps.add, "LITERAL-");
    return plus || (minus && size <= kLiteralMinusMax);
  }

  void InjectReply(const std::string& tag, std::string line) {
    Pending pe;
    pe.tag = tag;
    pe.injected = true;
    pe.line = std::move(line);
    pending_.push_back(std::move(pe));
    FlushInjected();
  }

  void FlushInjected() {
    while (!pending_.empty() && pending_.front().injected) {
      SendClient(std::move(pending_.front().line));
      pending_.pop_front();
    }
    MaybeUnblockClient();
  }

  // Resumes a client stream that waited for the connection to be quiet.
  void MaybeUnblockClient() {
    if (!pending_.empty() || closed_) return;
    if (bye_before_pending_) {
      bye_before_pending_ = false;
      p_->Fired(FaultKind::kByeBeforeForward);
      SendClient("* BYE " + (bye_text_.empty() ? "Server shutting down (injected)" : bye_text_) +
                 "\r\n");
      CloseGracefully();
      return;
    }
    if (wait_quiet_) {
      wait_quiet_ = false;
      ResumeClientLater(std::move(held_line_));
    }
  }

  // Posted, so the client stream never re-enters its own processing loop.
  void ResumeClientLater(std::string held_line = "") {
    auto self = shared_from_this();
    asio::post(p_->io, [self, held = std::move(held_line)]() mutable {
      if (self->closed_) return;
      if (!held.empty()) self->ForwardCommandStart(std::move(held));
      self->ProcessClient();
      self->ReadClient();
    });
  }

  // ---- server -> client ----
  void ReadServer() {
    if (s_reading_ || server_closed_) return;
    if (!discard_server_ && to_client_.bytes + held_out_.size() >= p_->opt.max_buffered_bytes) return;
    s_reading_ = true;
    auto self = shared_from_this();
    server_.async_read_some(asio::buffer(s_buf_), [self](const error_code& ec, size_t n) {
      self->s_reading_ = false;
      if (self->server_closed_) return;
      if (ec) {
        self->OnServerGone();
        return;
      }
      if (self->discard_server_ || self->closed_) {
        self->ReadServer();
        return;
      }
      self->s_in_.append(self->s_buf_.data(), n);
      self->ProcessServer();
      self->ReadServer();
    });
  }

  void OnServerGone() {
    error_code ignored;
    server_.close(ignored);
    server_closed_ = true;
    if (!closed_) CloseGracefully();  // the client gets what was already sent
  }

  void ProcessServer() {
    while (!closed_ && s_pos_ < s_in_.size()) {
      if (s_mode_ == Mode::kOpaque) {
        ForwardToClient(s_in_.substr(s_pos_));
        s_pos_ = s_in_.size();
        break;
      }
      if (s_mode_ == Mode::kLiteral) {
        uint64_t n = std::min<uint64_t>(s_lit_left_, s_in_.size() - s_pos_);
        ForwardToClient(s_in_.substr(s_pos_, n));
        s_pos_ += n;
        s_lit_left_ -= n;
        if (s_lit_left_ == 0) s_mode_ = Mode::kLine;
        continue;
      }
      size_t nl = s_in_.find('\n', s_pos_);
      if (nl == std::string::npos) {
        if (s_in_.size() - s_pos_ > p_->opt.max_line_bytes) Close(false);
        break;
      }
      std::string line = s_in_.substr(s_pos_, nl + 1 - s_pos_);
      s_pos_ = nl + 1;
      OnServerLine(std::move(line));
    }
    if (s_pos_ > 0 && (s_pos_ == s_in_.size() || s_pos_ > kReadChunk)) {
      s_in_.erase(0, s_pos_);
      s_pos_ = 0;
    }
  }

  void OnServerLine(std::string line) {
    std::string_view body = StripCrlf(line);
    auto lit = TrailingLiteral(body);
    bool starts = !s_in_response_;
    s_in_response_ = lit.has_value();
    if (lit) {
      s_mode_ = lit->size > 0 ? Mode::kLiteral : Mode::kLine;
      s_lit_left_ = lit->size;
    }
    if (!starts || lit) {
      ForwardToClient(std::move(line));
      return;
    }
    if (body.rfind("* ", 0) == 0 || body.rfind("+", 0) == 0) {
      ForwardToClient(RewriteStatusLine(line));
      return;
    }
    OnTaggedLine(std::move(line));
  }

  void OnTaggedLine(std::string line) {
    std::string_view body = StripCrlf(line);
    std::string tag(body.substr(0, body.find(' ')));
    auto it = std::find_if(pending_.begin(), pending_.end(),
                           [&](const Pending& pe) { return !pe.injected && pe.tag == tag; });
    if (tag == continuation_tag_) {
      continuation_tag_.clear();
      sasl_plain_pending_ = false;
    }
    if (it == pending_.end()) {
      ForwardToClient(RewriteStatusLine(line));
      return;
    }
    Pending pe = std::move(*it);
    pending_.erase(it);
    std::string_view status = body.substr(std::min(body.size(), tag.size() + 1));
    bool ok = status.rfind("OK", 0) == 0 || status.rfind("ok", 0) == 0;
    if (pe.bye_after_ok && ok) {
      p_->Fired(FaultKind::kByeAfterOk);
      SendClient("* BYE " +
                 (pe.bye_text.empty() ? std::string("Server shutting down (injected)") : pe.bye_text) +
                 "\r\n");
      CloseGracefully();
      return;
    }
    if (pe.stall) {
      p_->Fired(FaultKind::kStallReplies);
      BeginHold(pe.stall_for);
    }
    ForwardToClient(RewriteStatusLine(line));
    if (pe.starttls && ok) {
      // From here on both directions are TLS records.
      s_mode_ = Mode::kOpaque;
      c_mode_ = Mode::kOpaque;
    }
    if (pause_until_tag_ == tag) {
      pause_until_tag_.clear();
      ResumeClientLater();
    }
    FlushInjected();
  }

  // Capability lists and UIDPLUS codes in a status or CAPABILITY response.
  std::string RewriteStatusLine(const std::string& line) {
    auto caps = p_->Caps();
    std::string_view body = StripCrlf(line);
    std::string out(body);
    auto rewrite_list = [&](std::string_view list) {
      std::string r;
      bool plus = false, minus = false;
      for (const auto& c : SplitWords(list)) {
        if (CapabilityMatches(c, "LITERAL+")) plus = true;
        if (CapabilityMatches(c, "LITERAL-")) minus = true;
        if (AnyMatches(caps.hide, c)) continue;
        r += (r.empty() ? "" : " ") + c;
      }
      for (const auto& a : caps.add) {
        if (!AnyMatches(SplitWords(r), a)) r += (r.empty() ? "" : " ") + a;
      }
      srv_literal_plus_ = plus;
      srv_literal_minus_ = minus;
      return r;
    };
    bool changed = false;
    std::string upper = Upper(out);
    if (upper.rfind("* CAPABILITY ", 0) == 0) {
      out = "* CAPABILITY " + rewrite_list(std::string_view(out).substr(13));
      changed = true;
    } else {
      size_t p = upper.find("[CAPABILITY ");
      if (p != std::string::npos) {
        size_t e = out.find(']', p);
        if (e != std::string::npos) {
          out = out.substr(0, p) + "[CAPABILITY " +
                rewrite_list(std::string_view(out).substr(p + 12, e - p - 12)) + out.substr(e);
          changed = true;
        }
      }
    }
    if (caps.enforce && AnyMatches(caps.hide, "UIDPLUS")) {
      for (const char* code : {"[APPENDUID ", "[COPYUID "}) {
        size_t p = Upper(out).find(code);
        if (p == std::string::npos) continue;
        size_t e = out.find(']', p);
        if (e == std::string::npos) continue;
        size_t end = e + 1;
        if (end < out.size() && out[end] == ' ') ++end;
        out.erase(p, end - p);
        changed = true;
      }
    }
    if (!changed) return line;
    return out + "\r\n";
  }

  void BeginHold(std::chrono::milliseconds d) {
    hold_ = true;
    if (d.count() <= 0) return;  // until the connection closes
    hold_timer_.expires_after(d);
    auto self = shared_from_this();
    hold_timer_.async_wait([self](const error_code& ec) {
      if (ec || self->closed_) return;
      self->hold_ = false;
      if (!self->held_out_.empty()) self->SendClient(std::move(self->held_out_));
      self->held_out_.clear();
      self->ReadServer();
    });
  }

  void ForwardToClient(std::string bytes) {
    p_->Count(&FaultProxyCounters::bytes_server_to_client, bytes.size());
    SendClient(std::move(bytes));
  }

  // ---- output ----
  void SendServer(std::string bytes) {
    if (server_closed_ || shutdown_server_ || bytes.empty()) return;
    p_->Count(&FaultProxyCounters::bytes_client_to_server, bytes.size());
    to_server_.bytes += bytes.size();
    to_server_.queue.push_back(std::move(bytes));
    Write(&to_server_, &server_, /*to_client=*/false);
  }

  void SendClient(std::string bytes) {
    if (client_closed_ || bytes.empty()) return;
    if (hold_) {
      held_out_ += bytes;
      return;
    }
    to_client_.bytes += bytes.size();
    to_client_.queue.push_back(std::move(bytes));
    Write(&to_client_, &client_, /*to_client=*/true);
  }

  void Write(Out* out, tcp::socket* sock, bool to_client) {
    if (out->writing) return;
    if (out->queue.empty()) {
      AfterDrained(to_client);
      return;
    }
    out->writing = true;
    std::vector<asio::const_buffer> bufs;
    while (!out->queue.empty() && out->batch.size() < 64) {
      out->batch.push_back(std::move(out->queue.front()));
      out->queue.pop_front();
    }
    for (const auto& b : out->batch) bufs.emplace_back(asio::buffer(b));
    auto self = shared_from_this();
    asio::async_write(*sock, bufs, [self, out, sock, to_client](const error_code& ec, size_t n) {
      out->writing = false;
      out->bytes -= n;
      out->batch.clear();
      if (ec) {
        if (to_client) {
          self->client_closed_ = true;
          self->Close(false);
        } else {
          self->ShutdownServer();
        }
        return;
      }
      self->Write(out, sock, to_client);
      if (to_client) {
        self->ReadServer();
      } else {
        self->ReadClient();
      }
    });
  }

  void AfterDrained(bool to_client) {
    if (to_client && close_client_when_drained_) {
      close_client_when_drained_ = false;
      error_code ignored;
      client_.shutdown(tcp::socket::shutdown_send, ignored);
      client_.close(ignored);
      client_closed_ = true;
      Close(false);
    }
    if (!to_client && c_eof_) ShutdownServer();
  }

  // ---- closing ----
  // Sends what is queued for the client, then closes it; closes upstream now.
  void CloseGracefully() {
    if (closed_) return;
    closed_ = true;
    hold_ = false;
    if (!held_out_.empty()) SendClient(std::move(held_out_));
    held_out_.clear();
    CountClosed();
    ShutdownServer();
    close_client_when_drained_ = true;
    if (!to_client_.writing && to_client_.queue.empty()) AfterDrained(true);
  }

  void Close(bool reset_client) {
    if (!closed_) {
      closed_ = true;
      CountClosed();
    }
    error_code ignored;
    hold_timer_.cancel();
    if (!client_closed_) {
      if (reset_client) client_.set_option(asio::socket_base::linger(true, 0), ignored);
      client_.close(ignored);
      client_closed_ = true;
    }
    ShutdownServer();
  }

  // FIN to the server, then drain its output until it closes (closing with
  // unread data would send RST instead).
  void ShutdownServer() {
    if (server_closed_ || shutdown_server_) return;
    shutdown_server_ = true;
    discard_server_ = closed_;
    error_code ignored;
    server_.shutdown(tcp::socket::shutdown_send, ignored);
    ReadServer();
  }

  void CountClosed() {
    std::lock_guard<std::mutex> l(p_->mu);
    if (p_->counters.connections_open > 0) --p_->counters.connections_open;
  }

  FaultProxy::Impl* p_;
  tcp::socket client_;
  tcp::socket server_;
  asio::steady_timer hold_timer_;
  std::array<char, kReadChunk> c_buf_{};
  std::array<char, kReadChunk> s_buf_{};

  // client -> server
  std::string c_in_;
  size_t c_pos_ = 0;
  bool c_reading_ = false;
  bool c_eof_ = false;
  Mode c_mode_ = Mode::kLine;
  uint64_t c_lit_left_ = 0;
  bool in_command_ = false;
  Command cmd_;
  std::string continuation_tag_;
  bool sasl_plain_pending_ = false;
  std::string user_;
  bool wait_quiet_ = false;
  std::string held_line_;
  bool bye_before_pending_ = false;
  std::string bye_text_;
  std::string pause_until_tag_;

  // server -> client
  std::string s_in_;
  size_t s_pos_ = 0;
  bool s_reading_ = false;
  Mode s_mode_ = Mode::kLine;
  uint64_t s_lit_left_ = 0;
  bool s_in_response_ = false;
  bool srv_literal_plus_ = false;
  bool srv_literal_minus_ = false;
  bool hold_ = false;
  std::string held_out_;

  std::deque<Pending> pending_;
  Out to_client_;
  Out to_server_;
  bool closed_ = false;
  bool client_closed_ = false;
  bool server_closed_ = false;
  bool shutdown_server_ = false;
  bool discard_server_ = false;
  bool close_client_when_drained_ = false;

};

// ---------------------------------------------------------------------------

AppendDecision FaultProxy::Impl::DecideAppend(const std::string& user) {
  std::lock_guard<std::mutex> l(mu);
  ++counters.append_commands;
  uint64_t global = ++append_seq;
  uint64_t mine = user.empty() ? 0 : ++user_append_seq[user];
  AppendDecision d;
  for (const auto& r : opt.faults) {
    if (r.kind == FaultKind::kRejectConnection) continue;
    uint64_t n = r.user.empty() ? global : (r.user == user ? mine : 0);
    if (n == 0 || n < r.nth || (r.times != 0 && n >= r.nth + r.times)) continue;
    switch (r.kind) {
      case FaultKind::kByeBeforeForward:
        d.bye_before = true;
        d.bye_text = r.response;
        break;
      case FaultKind::kReject:
        d.reject = true;
        d.reject_response = r.response.empty() ? "NO Refused (injected)" : r.response;
        break;
      case FaultKind::kResetInLiteral:
        d.reset = true;
        d.reset_after = r.after_bytes;
        break;
      case FaultKind::kByeAfterOk:
        d.bye_after_ok = true;
        d.bye_text = r.response;
        break;
      case FaultKind::kStallReplies:
        d.stall = true;
        d.stall_for = r.stall;
        break;
      case FaultKind::kRejectConnection:
        break;
    }
  }
  return d;
}

std::optional<std::string> FaultProxy::Impl::DecideConnection() {
  std::lock_guard<std::mutex> l(mu);
  ++counters.connections_accepted;
  uint64_t n = ++connection_seq;
  for (const auto& r : opt.faults) {
    if (r.kind != FaultKind::kRejectConnection) continue;
    if (n < r.nth || (r.times != 0 && n >= r.nth + r.times)) continue;
    ++counters.connections_rejected;
    ++counters.faults_fired;
    cv.notify_all();
    return r.response.empty() ? std::string("Too many connections (injected)") : r.response;
  }
  ++counters.connections_open;
  return std::nullopt;
}

void FaultProxy::Impl::Fired(FaultKind k) {
  std::lock_guard<std::mutex> l(mu);
  ++counters.faults_fired;
  switch (k) {
    case FaultKind::kResetInLiteral: ++counters.resets; break;
    case FaultKind::kStallReplies: ++counters.stalls; break;
    case FaultKind::kByeAfterOk: ++counters.byes_after_ok; break;
    case FaultKind::kByeBeforeForward: ++counters.byes_before_forward; break;
    case FaultKind::kReject: ++counters.rejects; break;
    case FaultKind::kRejectConnection: ++counters.connections_rejected; break;
  }
  cv.notify_all();
}

void FaultProxy::Impl::Accept() {
  acceptor->async_accept([this](const error_code& ec, tcp::socket sock) {
    if (ec) {
      if (ec != asio::error::operation_aborted && acceptor->is_open()) Accept();
      return;
    }
    error_code ignored;
    sock.set_option(tcp::no_delay(true), ignored);
    if (auto bye = DecideConnection()) {
      // Greet with BYE and close; the socket lives until the write is done.
      auto s = std::make_shared<tcp::socket>(std::move(sock));
      auto msg = std::make_shared<std::string>("* BYE " + *bye + "\r\n");
      asio::async_write(*s, asio::buffer(*msg), [s, msg](const error_code&, size_t) {
        error_code ig;
        s->shutdown(tcp::socket::shutdown_send, ig);
        s->close(ig);
      });
    } else {
      auto session = std::make_shared<Session>(this, std::move(sock));
      sessions.erase(std::remove_if(sessions.begin(), sessions.end(),
                                    [](const std::weak_ptr<Session>& w) { return w.expired(); }),
                     sessions.end());
      sessions.push_back(session);
      session->Start();
    }
    Accept();
  });
}

FaultProxy::FaultProxy() : impl_(std::make_unique<Impl>()) {}

Result<std::unique_ptr<FaultProxy>> FaultProxy::Start(FaultProxyOptions options) {
  if (options.upstream_port == 0) return Status::InvalidArgument("FaultProxy: no upstream port");
  std::unique_ptr<FaultProxy> p(new FaultProxy());
  Impl* impl = p->impl_.get();
  impl->opt = std::move(options);
  try {
    impl->acceptor.emplace(impl->io);
    tcp::endpoint ep(asio::ip::address_v4::loopback(), 0);
    impl->acceptor->open(ep.protocol());
    impl->acceptor->set_option(tcp::acceptor::reuse_address(true));
    impl->acceptor->bind(ep);
    impl->acceptor->listen();
    impl->port = impl->acceptor->local_endpoint().port();
  } catch (const boost::system::system_error& e) {
    return Status::IOError(std::string("FaultProxy listen: ") + e.what());
  }
  impl->Accept();
  impl->thread = std::thread([impl] {
    for (;;) {
      try {
        impl->io.run();
        return;
      } catch (const std::exception&) {
        // A handler threw (allocation failure, ...): keep serving the others.
      }
    }
  });
  return p;
}

FaultProxy::~FaultProxy() {
  Impl* impl = impl_.get();
  asio::post(impl->io, [impl] {
    error_code ignored;
    impl->acceptor->close(ignored);
    for (auto& w : impl->sessions) {
      if (auto s = w.lock()) s->Abort();
    }
    impl->io.stop();
  });
  if (impl->thread.joinable()) impl->thread.join();
}

uint16_t FaultProxy::port() const { return impl_->port; }

void FaultProxy::SetFaults(std::vector<FaultRule> faults) {
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->opt.faults = std::move(faults);
}

void FaultProxy::AddFault(FaultRule rule) {
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->opt.faults.push_back(std::move(rule));
}

void FaultProxy::SetHiddenCapabilities(std::vector<std::string> hide, std::vector<std::string> add) {
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->opt.hide_capabilities = std::move(hide);
  impl_->opt.add_capabilities = std::move(add);
}

void FaultProxy::ResetCounters() {
  std::lock_guard<std::mutex> l(impl_->mu);
  uint64_t open = impl_->counters.connections_open;
  impl_->counters = FaultProxyCounters{};
  impl_->counters.connections_open = open;
  impl_->append_seq = 0;
  impl_->user_append_seq.clear();
  impl_->connection_seq = 0;
}

FaultProxyCounters FaultProxy::counters() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->counters;
}

bool FaultProxy::WaitForFaults(uint64_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> l(impl_->mu);
  return impl_->cv.wait_for(l, timeout, [&] { return impl_->counters.faults_fired >= n; });
}

void FaultProxy::DropAllConnections() {
  Impl* impl = impl_.get();
  std::promise<void> done;
  auto fut = done.get_future();
  asio::post(impl->io, [impl, &done] {
    for (auto& w : impl->sessions) {
      if (auto s = w.lock()) s->Abort();
    }
    done.set_value();
  });
  fut.wait();
}

}  // namespace wxa::test
