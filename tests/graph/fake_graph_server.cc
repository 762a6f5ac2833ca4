// Boost.Beast/Asio transport for the fake Graph service: one strand per
// connection, async reads and writes, timers for slow replies. The service
// (fake_graph_service.cc) decides everything; this file only moves bytes and
// carries out its Plan (wait, drop, answer).
#include "tests/graph/fake_graph_server.h"

#include <atomic>
#include <ctime>
#include <mutex>
#include <thread>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "tests/graph/fake_graph_service.h"

namespace wxa::test {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using graph_internal::GraphService;
using graph_internal::HttpRequest;
using graph_internal::HttpResponse;
using graph_internal::Plan;

// Bodies past this are refused by closing the connection: far above any
// Graph limit, it only guards the test process's memory.
constexpr uint64_t kHardBodyLimit = 256u << 20;
constexpr uint32_t kHeaderLimit = 64u << 10;
constexpr auto kIdleTimeout = std::chrono::seconds(120);

std::string HttpDate() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return buf;
}

std::string NextRequestId() {
  static std::atomic<uint64_t> counter{0};
  char buf[48];
  uint64_t n = ++counter;
  std::snprintf(buf, sizeof buf, "00000000-0000-4000-8000-%012llx", static_cast<unsigned long long>(n));
  return buf;
}

HttpRequest ToRequest(http::request<http::string_body>& req, bool take_body) {
  HttpRequest out;
  out.method = std::string(req.method_string());
  out.target = std::string(req.target());
  for (const auto& field : req) {
    std::string name(field.name_string());
    for (char& c : name) c = char(std::tolower(static_cast<unsigned char>(c)));
    out.headers.emplace_back(std::move(name), std::string(field.value()));
  }
  if (take_body) out.body = std::move(req.body());
  return out;
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, GraphService* svc)
      : stream_(std::move(socket)), timer_(stream_.get_executor()), svc_(svc) {}

  void Run() {
    net::dispatch(stream_.get_executor(), beast::bind_front_handler(&Session::ReadHeader, shared_from_this()));
  }

 private:
  void ReadHeader() {
    parser_.emplace();
    parser_->body_limit(kHardBodyLimit);
    parser_->header_limit(kHeaderLimit);
    stream_.expires_after(kIdleTimeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&Session::OnHeader, shared_from_this()));
  }

  void OnHeader(beast::error_code ec, size_t) {
    if (ec) return Close();
    auto& req = parser_->get();
    if (!beast::iequals(req[http::field::expect], "100-continue")) return ReadBody();
    // Beast does not answer Expect itself; without this curl stalls a second
    // before sending any body over 1 MB.
    std::optional<HttpResponse> early;
    try {
      early = svc_->CheckHeader(ToRequest(req, false), parser_->content_length().value_or(0));
    } catch (const std::exception& e) {
      early = svc_->InternalError(e.what());
    }
    client_request_id_ = std::string(req["client-request-id"]);
    if (early) {
      keep_alive_ = false;  // the body was never sent: the stream is out of step
      return Write(std::move(*early));
    }
    continue_ = std::make_shared<http::response<http::empty_body>>(http::status::continue_, req.version());
    http::async_write(stream_, *continue_, [self = shared_from_this()](beast::error_code ec2, size_t) {
      if (ec2) return self->Close();
      self->ReadBody();
    });
  }

  void ReadBody() {
    http::async_read(stream_, buffer_, *parser_, beast::bind_front_handler(&Session::OnRead, shared_from_this()));
  }

  void OnRead(beast::error_code ec, size_t) {
    if (ec) return Close();
    keep_alive_ = parser_->get().keep_alive();
    client_request_id_ = std::string(parser_->get()["client-request-id"]);
    req_ = ToRequest(parser_->get(), true);
    try {
      plan_ = svc_->Begin(req_);
    } catch (const std::exception& e) {
      return Write(svc_->InternalError(e.what()));
    }
    if (plan_.drop == Plan::Drop::kBefore) {
      svc_->Finish(&plan_);
      return Drop();
    }
    if (!plan_.response && plan_.delay.count() > 0) {
      timer_.expires_after(plan_.delay);
      timer_.async_wait([self = shared_from_this()](beast::error_code) { self->Process(); });
      return;
    }
    Process();
  }

  void Process() {
    HttpResponse resp;
    try {
      resp = svc_->Execute(req_, plan_);
    } catch (const std::exception& e) {
      resp = svc_->InternalError(e.what());
    }
    // The slot is freed before the write starts: a client that sends its next
    // request the moment it reads this reply must not find it still taken.
    svc_->Finish(&plan_);
    if (plan_.drop == Plan::Drop::kAfter) return Drop();
    Write(std::move(resp));
  }

  void Write(HttpResponse r) {
    auto res = std::make_shared<http::response<http::string_body>>();
    res->version(11);
    res->result(static_cast<unsigned>(r.status));
    bool close = !keep_alive_;
    for (auto& [name, value] : r.headers) {
      if (beast::iequals(name, "connection")) {
        close = close || beast::iequals(value, "close");
        continue;
      }
      res->set(name, value);
    }
    res->set(http::field::server, "wxa-fake-graph");
    res->set(http::field::date, HttpDate());
    std::string rid = NextRequestId();
    res->set("request-id", rid);
    res->set("client-request-id", client_request_id_.empty() ? rid : client_request_id_);
    res->body() = std::move(r.body);
    res->keep_alive(!close);
    res->prepare_payload();
    res_ = std::move(res);
    http::async_write(stream_, *res_, [self = shared_from_this(), close](beast::error_code ec, size_t) {
      self->res_.reset();
      if (ec || close) return self->Close();
      self->ReadHeader();
    });
  }

  void Close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
  }

  // The client sees the connection end with no response at all.
  void Drop() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
  }

  beast::tcp_stream stream_;
  net::steady_timer timer_;
  beast::flat_buffer buffer_;
  GraphService* svc_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<http::response<http::empty_body>> continue_;
  std::shared_ptr<http::response<http::string_body>> res_;
  HttpRequest req_;
  Plan plan_;
  bool keep_alive_ = true;
  std::string client_request_id_;
};

class Listener : public std::enable_shared_from_this<Listener> {
 public:
  Listener(net::io_context& ioc, GraphService* svc) : ioc_(ioc), acceptor_(net::make_strand(ioc)), svc_(svc) {}

  Status Open(const std::string& host, uint16_t port) {
    beast::error_code ec;
    auto addr = net::ip::make_address(host, ec);
    if (ec) return Status::InvalidArgument("fake graph: bad host " + host);
    tcp::endpoint ep(addr, port);
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
    if (ec) return Status::IOError("fake graph: cannot listen on " + host + ":" + std::to_string(port) + ": " + ec.message());
    port_ = acceptor_.local_endpoint().port();
    return Status::Ok();
  }
  uint16_t port() const { return port_; }
  void Run() { DoAccept(); }

 private:
  void DoAccept() {
    acceptor_.async_accept(net::make_strand(ioc_), beast::bind_front_handler(&Listener::OnAccept, shared_from_this()));
  }
  void OnAccept(beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;
    if (!ec) {
      beast::error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);
      std::make_shared<Session>(std::move(socket), svc_)->Run();
    }
    DoAccept();
  }

  net::io_context& ioc_;
  tcp::acceptor acceptor_;
  GraphService* svc_;
  uint16_t port_ = 0;
};

}  // namespace

struct FakeGraphServer::Impl {
  mutable std::mutex mu;  // Start/Stop against each other
  std::unique_ptr<GraphService> svc = std::make_unique<GraphService>();
  // Declared after svc: sessions point at it, so the context goes first.
  std::unique_ptr<net::io_context> ioc;
  std::shared_ptr<Listener> listener;
  std::vector<std::thread> threads;
  std::string host;
  uint16_t port = 0;
  bool running = false;

  void StopLocked() {
    if (!running) return;
    ioc->stop();
    for (auto& t : threads) t.join();
    threads.clear();
    listener.reset();
    ioc.reset();  // destroys pending handlers, closing every connection
    running = false;
  }
};

FakeGraphServer::FakeGraphServer() : impl_(std::make_unique<Impl>()) {}
FakeGraphServer::~FakeGraphServer() { Stop(); }

Status FakeGraphServer::Start(FakeGraphServerOptions options) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->running) return Status::AlreadyExists("fake graph: already running");
  if (options.io_threads < 1) return Status::InvalidArgument("fake graph: io_threads must be >= 1");
  auto svc = std::make_unique<GraphService>();
  std::string host = options.host;
  uint16_t port = options.port;
  int threads = options.io_threads;
  WXA_RETURN_IF_ERROR(svc->Init(std::move(options)));
  try {
    impl_->svc = std::move(svc);
    impl_->ioc = std::make_unique<net::io_context>(threads);
    impl_->listener = std::make_shared<Listener>(*impl_->ioc, impl_->svc.get());
    Status st = impl_->listener->Open(host, port);
    if (!st.ok()) {
      impl_->listener.reset();
      impl_->ioc.reset();
      return st;
    }
    impl_->host = host;
    impl_->port = impl_->listener->port();
    impl_->svc->set_base_url("http://" + host + ":" + std::to_string(impl_->port));
    impl_->listener->Run();
    for (int i = 0; i < threads; ++i) {
      impl_->threads.emplace_back([ioc = impl_->ioc.get()] { ioc->run(); });
    }
    impl_->running = true;
  } catch (const std::exception& e) {
    // Asio reports resource exhaustion (threads, sockets) by throwing.
    impl_->StopLocked();
    return Status::IOError(std::string("fake graph: start failed: ") + e.what());
  }
  return Status::Ok();
}

void FakeGraphServer::Stop() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->StopLocked();
}

bool FakeGraphServer::running() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->running;
}

uint16_t FakeGraphServer::port() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->port;
}

std::string FakeGraphServer::base_url() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return "http://" + impl_->host + ":" + std::to_string(impl_->port);
}

void FakeGraphServer::SetLimits(const FakeGraphLimits& limits) { impl_->svc->SetLimits(limits); }
void FakeGraphServer::SetFaults(const FakeGraphFaults& faults) { impl_->svc->SetFaults(faults); }
void FakeGraphServer::ExpireAllTokens() { impl_->svc->ExpireAllTokens(); }
void FakeGraphServer::AdvanceClock(std::chrono::milliseconds by) { impl_->svc->AdvanceClock(by); }
void FakeGraphServer::Reset() { impl_->svc->Reset(); }

std::vector<FakeGraphFolder> FakeGraphServer::Folders(std::string_view mailbox) const {
  return impl_->svc->Folders(mailbox);
}
std::vector<FakeGraphMessage> FakeGraphServer::Messages(std::string_view mailbox) const {
  return impl_->svc->Messages(mailbox);
}
std::optional<FakeGraphMessage> FakeGraphServer::FindMessage(std::string_view mailbox,
                                                             std::string_view internet_message_id) const {
  return impl_->svc->FindMessage(mailbox, internet_message_id);
}
FakeGraphMailboxStats FakeGraphServer::Stats(std::string_view mailbox) const { return impl_->svc->Stats(mailbox); }
uint64_t FakeGraphServer::TotalViolations() const { return impl_->svc->TotalViolations(); }
uint64_t FakeGraphServer::TokenRequests() const { return impl_->svc->TokenRequests(); }
uint64_t FakeGraphServer::TokensIssued() const { return impl_->svc->TokensIssued(); }
std::string FakeGraphServer::StatsJson() const { return impl_->svc->StatsJson(); }

}  // namespace wxa::test
