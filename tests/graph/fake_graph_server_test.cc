// Tests of the fake Graph server itself, through real HTTP (libcurl), one
// server per test. Limits are scaled down and the server's clock is moved
// with AdvanceClock, so the whole suite runs in a few seconds.
#include "tests/graph/fake_graph_server.h"

#include <curl/curl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <latch>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tests/graph/graph_codec.h"

extern char** environ;

namespace wxa::test {
namespace {

namespace codec = graph_codec;
using std::chrono::milliseconds;

constexpr char kClient[] = "9a1b2c3d-0000-4000-8000-00000000c11e";
constexpr char kSecret[] = "s3cr3t~value";
constexpr char kTenant[] = "11111111-2222-3333-4444-555555555555";
constexpr char kAlice[] = "alice@contoso.test";
constexpr char kBob[] = "bob@contoso.test";
constexpr char kScope[] = "https%3A%2F%2Fgraph.microsoft.com%2F.default";

// ---- libcurl client (RAII; STYLE rule 2) ----
struct CurlFree {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct SlistFree {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};

struct HttpResult {
  CURLcode code = CURLE_OK;
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lower-cased names
  std::string Header(const std::string& n) const {
    auto it = headers.find(n);
    return it == headers.end() ? "" : it->second;
  }
};

size_t OnBody(char* p, size_t size, size_t n, void* ud) {
  static_cast<std::string*>(ud)->append(p, size * n);
  return size * n;
}
size_t OnHeader(char* p, size_t size, size_t n, void* ud) {
  std::string line(p, size * n);
  size_t colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = codec::Lower(line.substr(0, colon));
    std::string value(codec::TrimView(line.substr(colon + 1)));
    (*static_cast<std::map<std::string, std::string>*>(ud))[name] = value;
  }
  return size * n;
}

HttpResult Request(const std::string& method, const std::string& url, const std::vector<std::string>& headers = {},
                   const std::string* body = nullptr) {
  static const bool init = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;  // first call is single-threaded
  (void)init;
  std::unique_ptr<CURL, CurlFree> h(curl_easy_init());
  HttpResult r;
  curl_slist* raw = nullptr;
  for (const auto& hd : headers) raw = curl_slist_append(raw, hd.c_str());
  std::unique_ptr<curl_slist, SlistFree> list(raw);
  curl_easy_setopt(h.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(h.get(), CURLOPT_HTTPHEADER, list.get());
  curl_easy_setopt(h.get(), CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(h.get(), CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(h.get(), CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(h.get(), CURLOPT_HEADERDATA, &r.headers);
  curl_easy_setopt(h.get(), CURLOPT_TIMEOUT, 20L);
  curl_easy_setopt(h.get(), CURLOPT_NOSIGNAL, 1L);
  if (body) {
    curl_easy_setopt(h.get(), CURLOPT_POSTFIELDS, body->data());
    curl_easy_setopt(h.get(), CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body->size()));
  }
  if (method != "GET" && !(method == "POST" && body)) {
    curl_easy_setopt(h.get(), CURLOPT_CUSTOMREQUEST, method.c_str());
  }
  r.code = curl_easy_perform(h.get());
  curl_easy_getinfo(h.get(), CURLINFO_RESPONSE_CODE, &r.status);
  return r;
}

// ---- RSA keys and JWT assertions ----
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using KeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

struct TestKey {
  KeyPtr key;
  std::string public_pem;
};

const TestKey& Key(int which) {
  // Two 2048-bit keys, made once per process (keygen is the slow part).
  static std::once_flag once;
  static TestKey keys[2];
  std::call_once(once, [] {
    for (auto& k : keys) {
      k.key.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t(2048)));
      std::unique_ptr<BIO, BioFree> bio(BIO_new(BIO_s_mem()));
      PEM_write_bio_PUBKEY(bio.get(), k.key.get());
      char* data = nullptr;
      long n = BIO_get_mem_data(bio.get(), &data);
      k.public_pem.assign(data, size_t(n));
    }
  });
  return keys[which];
}

std::string SignJwt(const std::string& header_json, const std::string& payload_json, EVP_PKEY* key, bool pss) {
  std::string signing = codec::Base64UrlEncode(header_json, false) + "." + codec::Base64UrlEncode(payload_json, false);
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  EVP_DigestSignInit(ctx.get(), &pctx, EVP_sha256(), nullptr, key);
  if (pss) {
    EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
    EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST);
  }
  size_t len = 0;
  EVP_DigestSign(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(signing.data()), signing.size());
  std::string sig(len, '\0');
  EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                 reinterpret_cast<const unsigned char*>(signing.data()), signing.size());
  sig.resize(len);
  return signing + "." + codec::Base64UrlEncode(sig, false);
}

int64_t NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string Mime(const std::string& message_id, const std::string& date = "Tue, 1 Jul 2003 10:52:37 +0200",
                 const std::string& body = "hello\r\n") {
  return "Message-ID: " + message_id + "\r\nDate: " + date +
         "\r\nSubject: =?UTF-8?B?5L2g5aW9?=\r\nFrom: \"Doe, Jo\" <jo@x.test>\r\nTo: a@contoso.test, b@contoso.test\r\n"
         "Content-Type: text/plain; charset=utf-8\r\n\r\n" +
         body;
}

// ---- fixture ----
class FakeGraphTest : public ::testing::Test {
 protected:
  static FakeGraphServerOptions DefaultOptions() {
    FakeGraphServerOptions o;
    o.tenant = kTenant;
    o.apps = {{kClient, kSecret, ""}};  // JWT tests add a key (keygen is slow)
    o.mailboxes = {{kAlice, "", ""}, {kBob, "", ""}};
    return o;
  }
  void Start(FakeGraphServerOptions o = DefaultOptions()) {
    Status st = server_.Start(std::move(o));
    ASSERT_TRUE(st.ok()) << st.ToString();
    base_ = server_.base_url();
  }
  void SetUp() override {}

  std::string TokenBody(const std::string& extra) const {
    return "grant_type=client_credentials&client_id=" + std::string(kClient) + "&scope=" + kScope + extra;
  }
  HttpResult PostToken(const std::string& body, const std::string& tenant = kTenant,
                       std::vector<std::string> headers = {}) {
    headers.push_back("Content-Type: application/x-www-form-urlencoded");
    return Request("POST", base_ + "/" + tenant + "/oauth2/v2.0/token", headers, &body);
  }
  std::string Token() {
    HttpResult r = PostToken(TokenBody(std::string("&client_secret=") + kSecret));
    EXPECT_EQ(r.status, 200) << r.body;
    std::string marker = "\"access_token\":\"";
    size_t at = r.body.find(marker);
    if (at == std::string::npos) return "";
    at += marker.size();
    return r.body.substr(at, r.body.find('"', at) - at);
  }
  std::vector<std::string> Auth(std::vector<std::string> more = {}) {
    if (token_.empty()) token_ = Token();
    more.push_back("Authorization: Bearer " + token_);
    return more;
  }
  HttpResult Get(const std::string& path) { return Request("GET", base_ + path, Auth()); }
  HttpResult PostJson(const std::string& path, const std::string& json) {
    return Request("POST", base_ + path, Auth({"Content-Type: application/json"}), &json);
  }
  HttpResult PostMime(const std::string& path, const std::string& mime) {
    std::string b64 = codec::Base64Encode(mime);
    return Request("POST", base_ + path, Auth({"Content-Type: text/plain"}), &b64);
  }
  HttpResult Import(const std::string& mime, const std::string& user = kAlice, const std::string& folder = "inbox") {
    return PostMime("/beta/users/" + user + "/mailFolders/" + folder + "/importMime", mime);
  }
  static std::string JsonField(const std::string& body, const std::string& key) {
    std::string marker = "\"" + key + "\":\"";
    size_t at = body.find(marker);
    if (at == std::string::npos) return "";
    at += marker.size();
    return body.substr(at, body.find('"', at) - at);
  }
  std::string MakeFolder(const std::string& name) {
    HttpResult r = PostJson(std::string("/v1.0/users/") + kAlice + "/mailFolders", "{\"displayName\":\"" + name + "\"}");
    EXPECT_EQ(r.status, 201) << r.body;
    return JsonField(r.body, "id");
  }
  // A non-draft JSON message (flags 1 = read, not unsent).
  HttpResult CreateJson(const std::string& folder, const std::string& imid, const std::string& extra = "") {
    return PostJson(std::string("/v1.0/users/") + kAlice + "/mailFolders/" + folder + "/messages",
                    "{\"subject\":\"s\",\"internetMessageId\":\"" + imid +
                        "\",\"singleValueExtendedProperties\":[{\"id\":\"Integer 0x0E07\",\"value\":\"1\"}]" + extra +
                        "}");
  }

  FakeGraphServer server_;
  std::string base_;
  std::string token_;
};

// ===========================================================================
// Token endpoint

TEST_F(FakeGraphTest, FakeGraphTokenClientSecretIssuesBearerToken) {
  Start();
  HttpResult r = PostToken(TokenBody(std::string("&client_secret=") + kSecret));
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("\"token_type\":\"Bearer\""), std::string::npos);
  EXPECT_NE(r.body.find("\"expires_in\":3599"), std::string::npos);
  EXPECT_EQ(server_.TokenRequests(), 1u);
  EXPECT_EQ(server_.TokensIssued(), 1u);
  // The tenant may be given by domain alias too, and the secret by HTTP Basic.
  std::string basic = "Authorization: Basic " + codec::Base64Encode(std::string(kClient) + ":" + kSecret);
  r = PostToken(TokenBody(""), "contoso.onmicrosoft.com", {basic});
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(server_.TokenRequests(), 2u);
}

TEST_F(FakeGraphTest, FakeGraphTokenRefusesBadRequests) {
  Start();
  HttpResult r = PostToken(TokenBody("&client_secret=wrong"));
  EXPECT_EQ(r.status, 401);
  EXPECT_NE(r.body.find("\"error\":\"invalid_client\""), std::string::npos);
  EXPECT_NE(r.body.find("AADSTS7000215"), std::string::npos);
  r = PostToken("grant_type=client_credentials&client_id=" + std::string(kClient) + "&client_secret=" + kSecret);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("'scope'"), std::string::npos);
  r = PostToken("grant_type=client_credentials&client_id=" + std::string(kClient) + "&client_secret=" + kSecret +
                "&scope=Mail.ReadWrite");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("invalid_scope"), std::string::npos);
  r = PostToken(TokenBody(std::string("&client_secret=") + kSecret), "other-tenant");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("AADSTS90002"), std::string::npos);
  r = PostToken("grant_type=password&client_id=x&scope=" + std::string(kScope));
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("unsupported_grant_type"), std::string::npos);
  r = PostToken("grant_type=client_credentials&client_id=nobody&client_secret=x&scope=" + std::string(kScope));
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("unauthorized_client"), std::string::npos);
  r = PostToken(TokenBody(""));
  EXPECT_EQ(r.status, 401);
  EXPECT_NE(r.body.find("AADSTS7000218"), std::string::npos);
  r = Request("GET", base_ + "/" + kTenant + "/oauth2/v2.0/token");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(server_.TokenRequests(), 8u);
  EXPECT_EQ(server_.TokensIssued(), 0u);
}

class FakeGraphJwtTest : public FakeGraphTest {
 protected:
  void StartWithKey() {
    FakeGraphServerOptions o = DefaultOptions();
    o.apps[0].public_key_pem = Key(0).public_pem;
    Start(o);
  }
  std::string Assertion(const std::string& aud, int64_t exp, int key = 0, bool pss = false,
                        const std::string& iss = kClient) {
    std::string header = std::string("{\"alg\":\"") + (pss ? "PS256" : "RS256") + "\",\"typ\":\"JWT\",\"x5t\":\"abc\"}";
    int64_t now = NowSeconds();
    std::string payload = "{\"aud\":\"" + aud + "\",\"iss\":\"" + iss + "\",\"sub\":\"" + std::string(kClient) +
                          "\",\"jti\":\"j-1\",\"nbf\":" + std::to_string(now) + ",\"iat\":" + std::to_string(now) +
                          ",\"exp\":" + std::to_string(exp) + "}";
    return SignJwt(header, payload, Key(key).key.get(), pss);
  }
  HttpResult PostAssertion(const std::string& jwt) {
    return PostToken(TokenBody(
        "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=" +
        jwt));
  }
  std::string Aud() const { return "https://login.microsoftonline.com/" + std::string(kTenant) + "/oauth2/v2.0/token"; }
};

TEST_F(FakeGraphJwtTest, FakeGraphTokenJwtAssertionAcceptedWithTheRightKey) {
  StartWithKey();
  int64_t exp = NowSeconds() + 600;
  HttpResult r = PostAssertion(Assertion(Aud(), exp));
  EXPECT_EQ(r.status, 200) << r.body;
  r = PostAssertion(Assertion(Aud(), exp, 0, /*pss=*/true));
  EXPECT_EQ(r.status, 200) << r.body;
  // The audience may also name this server's own token URL.
  r = PostAssertion(Assertion(base_ + "/" + kTenant + "/oauth2/v2.0/token", exp));
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(server_.TokensIssued(), 3u);
}

TEST_F(FakeGraphJwtTest, FakeGraphTokenBadPublicKeyRefusesToStart) {
  FakeGraphServerOptions o = DefaultOptions();
  o.apps[0].public_key_pem = "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n";
  Status st = server_.Start(o);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Status::Code::kInvalidArgument);
  EXPECT_FALSE(server_.running());
}

TEST_F(FakeGraphJwtTest, FakeGraphTokenJwtAssertionRefused) {
  StartWithKey();
  int64_t exp = NowSeconds() + 600;
  HttpResult r = PostAssertion(Assertion(Aud(), exp, /*key=*/1));
  EXPECT_EQ(r.status, 401);
  EXPECT_NE(r.body.find("AADSTS700027"), std::string::npos) << r.body;
  r = PostAssertion(Assertion(Aud(), NowSeconds() - 5));
  EXPECT_EQ(r.status, 401);
  EXPECT_NE(r.body.find("AADSTS700024"), std::string::npos) << r.body;
  r = PostAssertion(Assertion("https://login.microsoftonline.com/other/oauth2/v2.0/token", exp));
  EXPECT_EQ(r.status, 401);
  EXPECT_NE(r.body.find("AADSTS50013"), std::string::npos) << r.body;
  r = PostAssertion(Assertion(Aud(), exp, 0, false, "someone-else"));
  EXPECT_EQ(r.status, 401);
  EXPECT_NE(r.body.find("AADSTS700021"), std::string::npos) << r.body;
  r = PostAssertion("not.a.jwt");
  EXPECT_EQ(r.status, 400);
  // AdvanceClock moves the server past a valid assertion's exp.
  server_.AdvanceClock(std::chrono::seconds(601));
  r = PostAssertion(Assertion(Aud(), exp));
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(server_.TokensIssued(), 0u);
}

// ===========================================================================
// Bearer tokens on Graph

TEST_F(FakeGraphTest, FakeGraphAuthMissingUnknownAndExpiredTokensGet401) {
  FakeGraphServerOptions o = DefaultOptions();
  o.token_lifetime_s = 60;
  Start(o);
  std::string path = base_ + "/v1.0/users/" + kAlice + "/mailFolders";
  HttpResult r = Request("GET", path);
  EXPECT_EQ(r.status, 401);
  EXPECT_NE(r.body.find("\"code\":\"InvalidAuthenticationToken\""), std::string::npos);
  EXPECT_NE(r.Header("www-authenticate").find("Bearer"), std::string::npos);
  r = Request("GET", path, {"Authorization: Bearer nope"});
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(Get(std::string("/v1.0/users/") + kAlice + "/mailFolders").status, 200);
  server_.AdvanceClock(std::chrono::seconds(61));
  r = Get(std::string("/v1.0/users/") + kAlice + "/mailFolders");
  EXPECT_EQ(r.status, 401);
  EXPECT_NE(r.body.find("Access token has expired or is not yet valid."), std::string::npos);
  token_ = Token();
  EXPECT_EQ(Get(std::string("/v1.0/users/") + kAlice + "/mailFolders").status, 200);
  server_.ExpireAllTokens();
  EXPECT_EQ(Get(std::string("/v1.0/users/") + kAlice + "/mailFolders").status, 401);
  // Unauthenticated requests are not charged to any mailbox.
  EXPECT_EQ(server_.Stats(kAlice).requests, 2u);
}

TEST_F(FakeGraphTest, FakeGraphAuthTokensExpireMidRun) {
  FakeGraphServerOptions o = DefaultOptions();
  o.faults.expire_tokens_every_n = 3;
  Start(o);
  std::string path = std::string("/v1.0/users/") + kAlice + "/mailFolders";
  EXPECT_EQ(Get(path).status, 200);
  EXPECT_EQ(Get(path).status, 200);
  EXPECT_EQ(Get(path).status, 200);  // the 3rd expires every token after it is served
  EXPECT_EQ(Get(path).status, 401);
  token_ = Token();
  EXPECT_EQ(Get(path).status, 200);
  EXPECT_EQ(server_.TokensIssued(), 2u);
}

// ===========================================================================
// Users

TEST_F(FakeGraphTest, FakeGraphUsersLookupByUpnOrId) {
  Start();
  HttpResult r = Get("/v1.0/users/ALICE%40contoso.test");
  ASSERT_EQ(r.status, 200) << r.body;
  std::string id = JsonField(r.body, "id");
  EXPECT_EQ(JsonField(r.body, "userPrincipalName"), kAlice);
  EXPECT_EQ(id.size(), 36u);
  EXPECT_EQ(JsonField(Get("/v1.0/users/" + id).body, "userPrincipalName"), kAlice);
  // Mail endpoints take the id as well.
  EXPECT_EQ(Get("/v1.0/users/" + id + "/mailFolders").status, 200);

  r = Get("/v1.0/users/nobody@contoso.test");
  EXPECT_EQ(r.status, 404);
  EXPECT_NE(r.body.find("Request_ResourceNotFound"), std::string::npos);
  r = Get("/v1.0/users/nobody@contoso.test/mailFolders");
  EXPECT_EQ(r.status, 404);
  EXPECT_NE(r.body.find("ErrorInvalidUser"), std::string::npos);
  r = Get("/v1.0/me/mailFolders");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("delegated"), std::string::npos);
  // The directory lookup is not an Outlook request: not charged to the mailbox.
  EXPECT_EQ(server_.Stats(kAlice).requests, 1u);
}

// ===========================================================================
// Folders

TEST_F(FakeGraphTest, FakeGraphFoldersCreateFindAndDuplicate) {
  Start();
  std::string base = std::string("/v1.0/users/") + kAlice + "/mailFolders";
  std::string id = MakeFolder("WeChat Archiver");
  ASSERT_FALSE(id.empty());
  HttpResult r = PostJson(base, "{\"displayName\":\"wechat ARCHIVER\"}");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("\"code\":\"ErrorFolderExists\""), std::string::npos);
  // $filter=displayName eq '...' finds it (URL-encoded, quotes doubled).
  r = Get(base + "?$filter=displayName%20eq%20'WeChat%20Archiver'");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(JsonField(r.body, "id"), id);
  r = Get(base + "?$filter=" + codec::PercentEncode("displayName eq 'Bob''s'"));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body.find("\"id\""), std::string::npos);
  EXPECT_EQ(MakeFolder("Bob's").empty(), false);
  r = Get(base + "?$filter=" + codec::PercentEncode("displayName eq 'Bob''s'"));
  EXPECT_NE(r.body.find("Bob's"), std::string::npos);

  // childFolders under the new folder; the same name is fine at another level.
  r = PostJson(base + "/" + id + "/childFolders", "{\"displayName\":\"WeChat Archiver\"}");
  EXPECT_EQ(r.status, 201) << r.body;
  std::string child = JsonField(r.body, "id");
  EXPECT_EQ(JsonField(r.body, "parentFolderId"), id);
  r = Get(base + "/" + id + "/childFolders");
  EXPECT_NE(r.body.find(child), std::string::npos);
  EXPECT_EQ(PostJson(base + "/" + id + "/childFolders", "{\"displayName\":\"WeChat Archiver\"}").status, 400);
  // Well-known names work as ids; unknown ids do not.
  EXPECT_EQ(JsonField(Get(base + "/Inbox").body, "displayName"), "Inbox");
  EXPECT_EQ(Get(base + "/msgfolderroot/childFolders").status, 200);
  r = Get(base + "/AAMkADnope=");
  EXPECT_EQ(r.status, 404);
  EXPECT_NE(r.body.find("ErrorItemNotFound"), std::string::npos);
  r = Get(base + "/bad!id");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("ErrorInvalidIdMalformed"), std::string::npos);
  EXPECT_EQ(server_.Folders(kAlice).size(), 9u + 3u);
}

TEST_F(FakeGraphTest, FakeGraphFoldersExistsStatusConfigurable) {
  FakeGraphServerOptions o = DefaultOptions();
  o.folder_exists_status = 409;
  Start(o);
  MakeFolder("X");
  HttpResult r = PostJson(std::string("/v1.0/users/") + kAlice + "/mailFolders", "{\"displayName\":\"X\"}");
  EXPECT_EQ(r.status, 409);
  EXPECT_NE(r.body.find("ErrorFolderExists"), std::string::npos);
}

TEST_F(FakeGraphTest, FakeGraphFoldersPageWithNextLink) {
  Start();
  for (int i = 0; i < 5; ++i) MakeFolder("F" + std::to_string(i));  // 8 well-known + 5
  std::string url = base_ + "/v1.0/users/" + kAlice + "/mailFolders";
  int pages = 0, folders = 0;
  while (!url.empty()) {
    HttpResult r = Request("GET", url, Auth());
    ASSERT_EQ(r.status, 200) << r.body;
    ++pages;
    for (size_t at = r.body.find("\"displayName\""); at != std::string::npos; at = r.body.find("\"displayName\"", at + 1)) {
      ++folders;
    }
    url = JsonField(r.body, "@odata.nextLink");
  }
  EXPECT_EQ(pages, 2);  // default page size 10
  EXPECT_EQ(folders, 13);
  HttpResult r = Get(std::string("/v1.0/users/") + kAlice + "/mailFolders?$top=5&$count=true");
  EXPECT_NE(r.body.find("\"@odata.count\":13"), std::string::npos);
  EXPECT_NE(r.body.find("%24skip=5"), std::string::npos);
  EXPECT_EQ(Get(std::string("/v1.0/users/") + kAlice + "/mailFolders?$top=0").status, 400);
}

// ===========================================================================
// importMime and MIME create

TEST_F(FakeGraphTest, FakeGraphImportMimeCreatesNonDraft) {
  Start();
  std::string mime = Mime("<m1+x@wxa.test>");
  HttpResult r = Import(mime);
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_NE(r.body.find("\"isDraft\":false"), std::string::npos);
  EXPECT_EQ(JsonField(r.body, "internetMessageId"), "<m1+x@wxa.test>");
  EXPECT_EQ(JsonField(r.body, "receivedDateTime"), "2003-07-01T08:52:37Z");
  EXPECT_EQ(JsonField(r.body, "subject"), "你好");
  auto m = server_.FindMessage(kAlice, "<m1+x@wxa.test>");
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->source, FakeGraphMessage::Source::kImportMime);
  EXPECT_FALSE(m->is_draft);
  EXPECT_EQ(m->folder_name, "Inbox");
  EXPECT_EQ(m->raw_mime, mime);
  EXPECT_EQ(m->sent_date_time, "2003-07-01T08:52:37Z");
  EXPECT_EQ(m->from_address, "jo@x.test");
  EXPECT_EQ(m->to_addresses.size(), 2u);
  EXPECT_EQ(m->headers.front().name, "Message-ID");
  // GET .../$value returns the MIME as stored.
  EXPECT_EQ(Get(std::string("/v1.0/users/") + kAlice + "/messages/" + m->id + "/$value").body, mime);
}

TEST_F(FakeGraphTest, FakeGraphImportMimeRefusals) {
  Start();
  // importMime is documented under /beta only.
  HttpResult r = PostMime(std::string("/v1.0/users/") + kAlice + "/mailFolders/inbox/importMime", Mime("<a@x>"));
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("importMime"), std::string::npos);
  std::string junk = "this is not base64!";
  r = Request("POST", base_ + "/beta/users/" + kAlice + "/mailFolders/inbox/importMime",
              Auth({"Content-Type: text/plain"}), &junk);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("ErrorMimeContentInvalidBase64String"), std::string::npos);
  std::string b64 = codec::Base64Encode(Mime("<b@x>"));
  r = Request("POST", base_ + "/beta/users/" + kAlice + "/mailFolders/inbox/importMime",
              Auth({"Content-Type: application/json"}), &b64);
  EXPECT_EQ(r.status, 415);
  EXPECT_TRUE(server_.Messages(kAlice).empty());
}

TEST_F(FakeGraphTest, FakeGraphMimeCreateOnV1AlwaysMakesDrafts) {
  Start();
  HttpResult r = PostMime(std::string("/v1.0/users/") + kAlice + "/mailFolders/inbox/messages", Mime("<d1@x>"));
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_NE(r.body.find("\"isDraft\":true"), std::string::npos);
  EXPECT_EQ(JsonField(r.body, "sentDateTime"), "2003-07-01T08:52:37Z");
  r = PostMime(std::string("/v1.0/users/") + kAlice + "/messages", Mime("<d2@x>"));
  ASSERT_EQ(r.status, 201);
  auto inbox = server_.FindMessage(kAlice, "<d1@x>");
  auto drafts = server_.FindMessage(kAlice, "<d2@x>");
  EXPECT_EQ(inbox->folder_name, "Inbox");
  EXPECT_EQ(drafts->folder_name, "Drafts");
  EXPECT_TRUE(inbox->is_draft && drafts->is_draft);
  EXPECT_EQ(inbox->source, FakeGraphMessage::Source::kMimeDraft);
  EXPECT_EQ(server_.Stats(kAlice).drafts, 2u);
}

// ===========================================================================
// JSON create

TEST_F(FakeGraphTest, FakeGraphJsonCreateIsDraftUnlessFlagsSayOtherwise) {
  Start();
  std::string path = std::string("/v1.0/users/") + kAlice + "/mailFolders/inbox/messages";
  HttpResult r = PostJson(path, "{\"subject\":\"plain\",\"receivedDateTime\":\"2001-01-01T00:00:00Z\"}");
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_NE(r.body.find("\"isDraft\":true"), std::string::npos);
  EXPECT_NE(JsonField(r.body, "receivedDateTime"), "2001-01-01T00:00:00Z");  // ignored on create

  r = PostJson(path,
               "{\"subject\":\"archived\",\"internetMessageId\":\"<j1@x>\","
               "\"from\":{\"emailAddress\":{\"address\":\"jo@x.test\"}},"
               "\"toRecipients\":[{\"emailAddress\":{\"address\":\"a@contoso.test\"}}],"
               "\"body\":{\"contentType\":\"HTML\",\"content\":\"<b>hi</b>\"},"
               "\"internetMessageHeaders\":[{\"name\":\"X-WXA-Key\",\"value\":\"k1\"}],"
               "\"singleValueExtendedProperties\":["
               "{\"id\":\"Integer 0x0E07\",\"value\":\"1\"},"
               "{\"id\":\"SystemTime 0x0E06\",\"value\":\"2019-01-10T02:38:14Z\"},"
               "{\"id\":\"systemtime 0x0039\",\"value\":\"2019-01-10T02:38:00+00:00\"},"
               "{\"id\":\"String 0x1042\",\"value\":\"<parent@x>\"}]}");
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_NE(r.body.find("\"isDraft\":false"), std::string::npos);
  auto m = server_.FindMessage(kAlice, "<j1@x>").value();
  EXPECT_FALSE(m.is_draft);
  EXPECT_TRUE(m.is_read);
  EXPECT_EQ(m.received_date_time, "2019-01-10T02:38:14Z");
  EXPECT_EQ(m.sent_date_time, "2019-01-10T02:38:00Z");
  EXPECT_EQ(m.body_content_type, "html");
  EXPECT_EQ(m.from_address, "jo@x.test");
  ASSERT_EQ(m.headers.size(), 1u);
  EXPECT_EQ(m.headers[0].value, "k1");
  EXPECT_EQ(m.extended_properties.size(), 4u);
  EXPECT_FALSE(m.raw_json.empty());

  // 0x8 (mfUnsent) keeps it a draft; a bad value is refused.
  r = PostJson(path, "{\"internetMessageId\":\"<j2@x>\",\"singleValueExtendedProperties\":[{\"id\":\"Integer 0x0E07\",\"value\":\"9\"}]}");
  EXPECT_TRUE(server_.FindMessage(kAlice, "<j2@x>")->is_draft);
  r = PostJson(path, "{\"singleValueExtendedProperties\":[{\"id\":\"Integer 0x0E07\",\"value\":\"one\"}]}");
  EXPECT_EQ(r.status, 400);
  // Only x- headers may be set.
  r = PostJson(path, "{\"internetMessageHeaders\":[{\"name\":\"In-Reply-To\",\"value\":\"<p@x>\"}]}");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("InvalidInternetMessageHeader"), std::string::npos);
  EXPECT_EQ(server_.Stats(kAlice).drafts, 2u);
}

TEST_F(FakeGraphTest, FakeGraphJsonCreateWithInlineAttachment) {
  Start();
  std::string bytes = "\x89PNG\r\n\x1a\n-data";
  HttpResult r = CreateJson("inbox", "<att@x>",
                            ",\"attachments\":[{\"@odata.type\":\"#microsoft.graph.fileAttachment\",\"name\":\"a.png\","
                            "\"contentType\":\"image/png\",\"contentBytes\":\"" +
                                codec::Base64Encode(bytes) + "\"}]");
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_NE(r.body.find("\"hasAttachments\":true"), std::string::npos);
  auto m = server_.FindMessage(kAlice, "<att@x>").value();
  ASSERT_EQ(m.attachments.size(), 1u);
  EXPECT_EQ(m.attachments[0].bytes, bytes);
  EXPECT_FALSE(m.attachments[0].via_upload_session);
  r = Get(std::string("/v1.0/users/") + kAlice + "/messages/" + m.id + "/attachments");
  EXPECT_NE(r.body.find("a.png"), std::string::npos);
}

// ===========================================================================
// Queries

TEST_F(FakeGraphTest, FakeGraphQueryByInternetMessageId) {
  Start();
  std::string tricky = "<it's+1@wxa.test>";
  ASSERT_EQ(Import(Mime(tricky)).status, 201);
  ASSERT_EQ(Import(Mime("<other@wxa.test>")).status, 201);
  std::string folder = std::string("/v1.0/users/") + kAlice + "/mailFolders/inbox/messages";
  // Correct: quote doubled, whole literal percent-encoded ('+' as %2B).
  std::string filter = "internetMessageId eq '<it''s+1@wxa.test>'";
  HttpResult r = Get(folder + "?$filter=" + codec::PercentEncode(filter) + "&$select=id,internetMessageId");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(JsonField(r.body, "internetMessageId"), tricky);
  EXPECT_EQ(r.body.find("subject"), std::string::npos);  // $select honoured
  // A raw '+' is a space once the query is decoded: no match.
  r = Get(folder + "?$filter=internetMessageId%20eq%20'%3Cit''s+1%40wxa.test%3E'");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(JsonField(r.body, "internetMessageId"), "");
  // An unquoted quote is a syntax error.
  EXPECT_EQ(Get(folder + "?$filter=" + codec::PercentEncode("internetMessageId eq '<it's+1@wxa.test>'")).status, 400);
  // The mailbox-wide collection finds it too; another folder does not.
  r = Get(std::string("/v1.0/users/") + kAlice + "/messages?$filter=" + codec::PercentEncode(filter));
  EXPECT_EQ(JsonField(r.body, "internetMessageId"), tricky);
  r = Get(std::string("/v1.0/users/") + kAlice + "/mailFolders/drafts/messages?$filter=" + codec::PercentEncode(filter));
  EXPECT_EQ(JsonField(r.body, "internetMessageId"), "");
  // Get by id, also scoped to its folder.
  std::string id = server_.FindMessage(kAlice, tricky)->id;
  EXPECT_EQ(Get(folder + "/" + id).status, 200);
  EXPECT_EQ(Get(std::string("/v1.0/users/") + kAlice + "/mailFolders/drafts/messages/" + id).status, 404);
  EXPECT_EQ(JsonField(Get(std::string("/v1.0/users/") + kAlice + "/messages/" + id + "?$select=subject").body, "subject"),
            "你好");
}

TEST_F(FakeGraphTest, FakeGraphQueryCountsAndPages) {
  Start();
  for (int i = 0; i < 5; ++i) ASSERT_EQ(Import(Mime("<p" + std::to_string(i) + "@x>")).status, 201);
  std::string folder = std::string("/v1.0/users/") + kAlice + "/mailFolders/inbox/messages";
  HttpResult r = Get(folder + "/$count");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "5");
  EXPECT_EQ(Get(std::string("/v1.0/users/") + kAlice + "/mailFolders/drafts/messages/$count").body, "0");
  r = Get(folder + "?$count=true&$top=1&$select=id");
  EXPECT_NE(r.body.find("\"@odata.count\":5"), std::string::npos);
  std::string url = base_ + folder + "?$top=2&$select=internetMessageId";
  std::vector<std::string> seen;
  while (!url.empty()) {
    r = Request("GET", url, Auth());
    ASSERT_EQ(r.status, 200);
    for (size_t at = r.body.find("\"internetMessageId\":\""); at != std::string::npos;
         at = r.body.find("\"internetMessageId\":\"", at + 1)) {
      seen.push_back(JsonField(r.body.substr(at), "internetMessageId"));
    }
    url = JsonField(r.body, "@odata.nextLink");
  }
  EXPECT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen.front(), "<p4@x>");  // newest first
}

TEST_F(FakeGraphTest, FakeGraphQueryByExtendedProperty) {
  Start();
  std::string prop = "String {00020329-0000-0000-C000-000000000046} Name WxaKey";
  HttpResult r = PostJson(std::string("/v1.0/users/") + kAlice + "/mailFolders/inbox/messages",
                          "{\"internetMessageId\":\"<e1@x>\",\"singleValueExtendedProperties\":[{\"id\":\"" + prop +
                              "\",\"value\":\"key-1\"}]}");
  ASSERT_EQ(r.status, 201) << r.body;
  std::string filter = "singleValueExtendedProperties/Any(ep: ep/id eq '" + prop + "' and ep/value eq 'key-1')";
  r = Get(std::string("/v1.0/users/") + kAlice + "/mailFolders/inbox/messages?$filter=" + codec::PercentEncode(filter));
  EXPECT_EQ(JsonField(r.body, "internetMessageId"), "<e1@x>");
  std::string id = JsonField(r.body, "id");
  r = Get(std::string("/v1.0/users/") + kAlice + "/messages/" + id + "?$expand=" +
          codec::PercentEncode("singleValueExtendedProperties($filter=id eq '" + prop + "')"));
  EXPECT_NE(r.body.find("key-1"), std::string::npos) << r.body;
}

// ===========================================================================
// Upload sessions

class FakeGraphUploadTest : public FakeGraphTest {
 protected:
  // A non-draft JSON item and an upload session for `size` bytes on it.
  std::string Session(uint64_t size, std::string* message_id) {
    HttpResult r = CreateJson("inbox", "<big@x>");
    EXPECT_EQ(r.status, 201) << r.body;
    *message_id = JsonField(r.body, "id");
    r = PostJson(std::string("/v1.0/users/") + kAlice + "/messages/" + *message_id + "/attachments/createUploadSession",
                 "{\"AttachmentItem\":{\"attachmentType\":\"file\",\"name\":\"big.bin\",\"size\":" +
                     std::to_string(size) + "}}");
    EXPECT_EQ(r.status, 201) << r.body;
    EXPECT_NE(r.body.find("\"nextExpectedRanges\":[\"0-\"]"), std::string::npos);
    return JsonField(r.body, "uploadUrl");
  }
  HttpResult Put(const std::string& url, const std::string& data, uint64_t from, uint64_t total,
                 std::vector<std::string> headers = {}) {
    headers.push_back("Content-Type: application/octet-stream");
    headers.push_back("Content-Range: bytes " + std::to_string(from) + "-" + std::to_string(from + data.size() - 1) +
                      "/" + std::to_string(total));
    return Request("PUT", url, headers, &data);
  }
};

TEST_F(FakeGraphUploadTest, FakeGraphUploadChunksInOrder) {
  Start();
  std::string id;
  const uint64_t size = (3u << 20) + 12345;
  std::string url = Session(size, &id);
  ASSERT_NE(url.find("/AttachmentSessions('"), std::string::npos);
  ASSERT_NE(url.find("authtoken="), std::string::npos);
  std::string data(size, '\0');
  for (size_t i = 0; i < size; ++i) data[i] = char(i * 131 + 7);
  const uint64_t chunk = 2u << 20;
  HttpResult r = Put(url, data.substr(0, chunk), 0, size);
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_NE(r.body.find("\"nextExpectedRanges\":[\"2097152\"]"), std::string::npos);
  r = Put(url, data.substr(chunk), chunk, size);
  EXPECT_EQ(r.status, 201) << r.body;
  EXPECT_NE(r.Header("location").find("/Attachments('"), std::string::npos);
  auto m = server_.FindMessage(kAlice, "<big@x>").value();
  ASSERT_EQ(m.attachments.size(), 1u);
  EXPECT_TRUE(m.attachments[0].via_upload_session);
  EXPECT_EQ(m.attachments[0].bytes, data);
  EXPECT_EQ(m.attachments[0].name, "big.bin");
  EXPECT_EQ(server_.TotalViolations(), 0u);
  // The session is gone once complete.
  EXPECT_EQ(Put(url, "x", 0, size).status, 404);
}

TEST_F(FakeGraphUploadTest, FakeGraphUploadRangeErrors) {
  Start();
  std::string id;
  const uint64_t size = 3u << 20;
  std::string url = Session(size, &id);
  std::string a(1u << 20, 'a');
  ASSERT_EQ(Put(url, a, 0, size).status, 200);
  // A re-sent chunk (its reply was lost): 416 with where to resume, no violation.
  HttpResult r = Put(url, a, 0, size);
  EXPECT_EQ(r.status, 416);
  EXPECT_NE(r.body.find("\"nextExpectedRanges\":[\"1048576\"]"), std::string::npos);
  EXPECT_EQ(server_.Stats(kAlice).upload_range_rejections, 1u);
  EXPECT_EQ(server_.TotalViolations(), 0u);
  // A gap, a wrong total, a length mismatch: client bugs.
  EXPECT_EQ(Put(url, a, 2u << 20, size).status, 416);
  EXPECT_EQ(Put(url, a, 1u << 20, size + 1).status, 400);
  std::string range = "Content-Range: bytes 1048576-1048579/" + std::to_string(size);
  EXPECT_EQ(Request("PUT", url, {range}, &a).status, 400);
  EXPECT_EQ(server_.Stats(kAlice).violation_count(FakeGraphViolation::kBadUploadRange), 3u);
  // The URL is pre-authenticated: a bearer token is refused.
  EXPECT_EQ(Put(url, a, 1u << 20, size, Auth()).status, 401);
  // A chunk over the 4 MB cap is a 413.
  std::string five(5u << 20, 'b');
  EXPECT_EQ(Put(url, five, 1u << 20, size).status, 413);
  // DELETE cancels the session.
  EXPECT_EQ(Request("DELETE", url).status, 204);
  EXPECT_EQ(Put(url, a, 1u << 20, size).status, 404);
}

TEST_F(FakeGraphUploadTest, FakeGraphUploadSessionRefusals) {
  Start();
  HttpResult r = CreateJson("inbox", "<small@x>");
  std::string id = JsonField(r.body, "id");
  std::string path = std::string("/v1.0/users/") + kAlice + "/messages/" + id + "/attachments/createUploadSession";
  r = PostJson(path, "{\"AttachmentItem\":{\"attachmentType\":\"file\",\"name\":\"s\",\"size\":1000}}");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("ErrorAttachmentSizeShouldNotBeLessThanMinimumSize"), std::string::npos);
  r = PostJson(path, "{\"attachmentItem\":{\"attachmentType\":\"file\",\"name\":\"s\",\"size\":99000000}}");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("ErrorMessageSizeExceeded"), std::string::npos);
  // Not on items created from MIME (NOTES).
  r = Import(Mime("<mime@x>"));
  std::string mime_id = JsonField(r.body, "id");
  r = PostJson(std::string("/v1.0/users/") + kAlice + "/messages/" + mime_id + "/attachments/createUploadSession",
               "{\"AttachmentItem\":{\"attachmentType\":\"file\",\"name\":\"s\",\"size\":4000000}}");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("ErrorInvalidOperation"), std::string::npos);
}

// ===========================================================================
// Limits

// Slow replies on mail requests, so requests overlap deterministically.
FakeGraphFaults SlowMail(milliseconds by) {
  FakeGraphFaults f;
  f.path_filter = "/mailFolders";
  f.delay.every_nth = 1;
  f.delay_by = by;
  return f;
}

TEST_F(FakeGraphTest, FakeGraphLimitsFifthConcurrentRequestGets429) {
  FakeGraphServerOptions o = DefaultOptions();
  o.faults = SlowMail(milliseconds(400));
  Start(o);
  token_ = Token();
  std::vector<HttpResult> results(5);
  std::latch go(5);
  std::vector<std::thread> threads;
  for (int i = 0; i < 5; ++i) {
    threads.emplace_back([&, i] {
      go.arrive_and_wait();
      results[i] = Get(std::string("/v1.0/users/") + kAlice + "/mailFolders");
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0, throttled = 0;
  for (const auto& r : results) {
    if (r.status == 200) ++ok;
    if (r.status == 429) {
      ++throttled;
      EXPECT_EQ(r.Header("retry-after"), "1");
      EXPECT_NE(r.body.find("\"code\":\"ApplicationThrottled\""), std::string::npos);
      EXPECT_NE(r.body.find("Application is over its MailboxConcurrency limit."), std::string::npos);
    }
  }
  EXPECT_EQ(ok, 4);
  EXPECT_EQ(throttled, 1);
  FakeGraphMailboxStats s = server_.Stats(kAlice);
  EXPECT_EQ(s.violation_count(FakeGraphViolation::kConcurrency), 1u);
  EXPECT_EQ(s.peak_concurrency, 5);
  EXPECT_EQ(s.requests, 5u);  // the refused one is still counted
  // Another mailbox is not affected by Alice's load.
  EXPECT_EQ(server_.Stats(kBob).total_violations(), 0u);
}

TEST_F(FakeGraphTest, FakeGraphLimitsFourWorkersBackToBackStayClean) {
  FakeGraphServerOptions o = DefaultOptions();
  o.faults = SlowMail(milliseconds(20));
  Start(o);
  token_ = Token();
  std::latch go(4);
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      go.arrive_and_wait();
      // Each reply is followed at once by the next request: the slot must
      // already be free when the client reads the reply.
      for (int k = 0; k < 8; ++k) bad += Get(std::string("/v1.0/users/") + kAlice + "/mailFolders").status != 200;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(server_.Stats(kAlice).peak_concurrency, 4);
  EXPECT_EQ(server_.TotalViolations(), 0u);
}

TEST_F(FakeGraphTest, FakeGraphLimitsPerAppScopeSharesConcurrencyAcrossMailboxes) {
  FakeGraphServerOptions o = DefaultOptions();
  o.faults = SlowMail(milliseconds(400));
  o.limits.concurrency_scope = FakeGraphConcurrencyScope::kPerApp;
  Start(o);
  token_ = Token();
  std::latch go(6);
  std::vector<std::thread> threads;
  std::atomic<int> throttled{0};
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      go.arrive_and_wait();
      throttled += Get(std::string("/v1.0/users/") + (i % 2 ? kAlice : kBob) + "/mailFolders").status == 429;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(throttled.load(), 2);
  EXPECT_EQ(server_.Stats(kAlice).violation_count(FakeGraphViolation::kConcurrency) +
                server_.Stats(kBob).violation_count(FakeGraphViolation::kConcurrency),
            2u);
}

TEST_F(FakeGraphTest, FakeGraphLimitsRequestBudgetSlidingWindow) {
  FakeGraphServerOptions o = DefaultOptions();
  o.limits.request_budget = 5;
  o.limits.request_window = std::chrono::seconds(60);
  Start(o);
  std::string path = std::string("/v1.0/users/") + kAlice + "/mailFolders";
  for (int i = 0; i < 5; ++i) ASSERT_EQ(Get(path).status, 200);
  server_.AdvanceClock(std::chrono::seconds(30));
  HttpResult r = Get(path);
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.Header("retry-after"), "30");  // when the first request leaves the window
  EXPECT_NE(r.body.find("ApplicationThrottled"), std::string::npos);
  // Usage is still counted while throttled: at t=61 the five early requests
  // have left the window but the refused one has not.
  server_.AdvanceClock(std::chrono::seconds(31));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Get(path).status, 200) << i;
  EXPECT_EQ(Get(path).status, 429);
  FakeGraphMailboxStats s = server_.Stats(kAlice);
  EXPECT_EQ(s.violation_count(FakeGraphViolation::kRequestBudget), 2u);
  EXPECT_EQ(s.violation_count(FakeGraphViolation::kIgnoredRetryAfter), 0u);
  EXPECT_EQ(s.throttled, 2u);
  // Not waiting for Retry-After is a violation of its own (past the grace
  // that lets off requests already on the wire).
  EXPECT_EQ(Get(path).status, 429);
  EXPECT_EQ(server_.Stats(kAlice).violation_count(FakeGraphViolation::kIgnoredRetryAfter), 0u);
  server_.AdvanceClock(milliseconds(300));
  EXPECT_EQ(Get(path).status, 429);
  EXPECT_EQ(server_.Stats(kAlice).violation_count(FakeGraphViolation::kIgnoredRetryAfter), 1u);
}

TEST_F(FakeGraphTest, FakeGraphLimitsRequestBudgetFixedWindow) {
  FakeGraphServerOptions o = DefaultOptions();
  o.limits.request_budget = 3;
  o.limits.request_window = std::chrono::seconds(10);
  o.limits.window_kind = FakeGraphWindow::kFixed;
  Start(o);
  std::string path = std::string("/v1.0/users/") + kAlice + "/mailFolders";
  for (int i = 0; i < 3; ++i) ASSERT_EQ(Get(path).status, 200);
  HttpResult r = Get(path);
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.Header("retry-after"), "10");
  server_.AdvanceClock(std::chrono::seconds(10));
  EXPECT_EQ(Get(path).status, 200);
}

TEST_F(FakeGraphTest, FakeGraphLimitsUploadBudget) {
  FakeGraphServerOptions o = DefaultOptions();
  o.limits.upload_budget_bytes = 1000;
  o.limits.upload_window = std::chrono::seconds(300);
  Start(o);
  std::string path = std::string("/v1.0/users/") + kAlice + "/mailFolders/inbox/messages";
  std::string json = "{\"subject\":\"" + std::string(580, 'x') + "\"}";  // 595 bytes
  EXPECT_EQ(PostJson(path, json).status, 201);
  EXPECT_EQ(Get(path).status, 200);  // reads upload nothing
  HttpResult r = PostJson(path, json);
  EXPECT_EQ(r.status, 429);
  EXPECT_NE(r.body.find("Application is over its IncomingBytes limit."), std::string::npos);
  EXPECT_EQ(r.Header("retry-after"), "300");
  FakeGraphMailboxStats s = server_.Stats(kAlice);
  EXPECT_EQ(s.violation_count(FakeGraphViolation::kUploadBudget), 1u);
  EXPECT_EQ(s.upload_bytes, 2 * json.size());  // counted although refused
  server_.AdvanceClock(std::chrono::seconds(300));
  EXPECT_EQ(PostJson(path, json).status, 201);
  EXPECT_EQ(server_.Messages(kAlice).size(), 2u);
}

TEST_F(FakeGraphTest, FakeGraphLimitsBodyOver4MBIs413) {
  Start();
  std::string big(4u << 20, 'A');  // 4 MiB of base64 + nothing else: exactly at the cap
  std::string path = base_ + "/beta/users/" + kAlice + "/mailFolders/inbox/importMime";
  // With "Expect: 100-continue" (curl's default for large bodies) the answer
  // comes before the body is sent; without it, after.
  std::string over = big + "AAAA";
  HttpResult r = Request("POST", path, Auth({"Content-Type: text/plain"}), &over);
  EXPECT_EQ(r.status, 413);
  r = Request("POST", path, Auth({"Content-Type: text/plain", "Expect:"}), &over);
  EXPECT_EQ(r.status, 413);
  EXPECT_NE(r.body.find("4MB"), std::string::npos);
  EXPECT_EQ(server_.Stats(kAlice).violation_count(FakeGraphViolation::kBodyTooLarge), 2u);
  EXPECT_TRUE(server_.Messages(kAlice).empty());
  // At the cap is fine (a valid 3 MiB MIME as base64 is exactly 4 MiB).
  std::string mime = Mime("<cap@x>", "Tue, 1 Jul 2003 10:52:37 +0200", "");
  mime.append((3u << 20) - mime.size(), 'z');
  std::string b64 = codec::Base64Encode(mime);
  ASSERT_EQ(b64.size(), 4u << 20);
  r = Request("POST", path, Auth({"Content-Type: text/plain"}), &b64);
  EXPECT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(server_.Stats(kAlice).upload_bytes, 4u << 20);
}

// ===========================================================================
// Faults

TEST_F(FakeGraphTest, FakeGraphFaultsEveryNthError) {
  FakeGraphServerOptions o = DefaultOptions();
  o.faults.path_filter = "/importMime";
  o.faults.error.every_nth = 3;
  Start(o);
  std::vector<long> statuses;
  for (int i = 0; i < 6; ++i) {
    HttpResult r = Import(Mime("<f" + std::to_string(i) + "@x>"));
    statuses.push_back(r.status);
    if (r.status == 503) {
      EXPECT_EQ(r.Header("retry-after"), "1");
    }
  }
  EXPECT_EQ(statuses, (std::vector<long>{201, 201, 503, 201, 201, 503}));
  EXPECT_EQ(server_.Messages(kAlice).size(), 4u);  // a 503 stores nothing
  EXPECT_FALSE(server_.FindMessage(kAlice, "<f2@x>").has_value());
  EXPECT_EQ(server_.Stats(kAlice).injected_errors, 2u);
  EXPECT_EQ(server_.TotalViolations(), 0u);
  // 504 without Retry-After, set at run time.
  FakeGraphFaults f = o.faults;
  f.error.every_nth = 1;
  f.error_status = 504;
  f.error_retry_after = false;
  server_.SetFaults(f);
  HttpResult r = Import(Mime("<g@x>"));
  EXPECT_EQ(r.status, 504);
  EXPECT_EQ(r.Header("retry-after"), "");
}

TEST_F(FakeGraphTest, FakeGraphFaultsProbabilityIsSeeded) {
  FakeGraphServerOptions o = DefaultOptions();
  o.faults.path_filter = "/mailFolders";
  o.faults.error.probability = 0.5;
  o.faults.seed = 42;
  Start(o);
  auto run = [&] {
    std::string pattern;
    for (int i = 0; i < 24; ++i) {
      pattern += Get(std::string("/v1.0/users/") + kAlice + "/mailFolders").status == 200 ? '.' : 'X';
    }
    return pattern;
  };
  std::string first = run();
  server_.SetFaults(o.faults);  // same seed: same sequence
  EXPECT_EQ(run(), first);
  EXPECT_NE(first.find('X'), std::string::npos);
  EXPECT_NE(first.find('.'), std::string::npos);
}

TEST_F(FakeGraphTest, FakeGraphFaultsSlowReply) {
  FakeGraphServerOptions o = DefaultOptions();
  o.faults = SlowMail(milliseconds(150));
  Start(o);
  token_ = Token();
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(Get(std::string("/v1.0/users/") + kAlice + "/mailFolders").status, 200);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, milliseconds(150));
  EXPECT_EQ(server_.Stats(kAlice).injected_delays, 1u);
}

TEST_F(FakeGraphTest, FakeGraphFaultsDropBeforeStoresNothing) {
  FakeGraphServerOptions o = DefaultOptions();
  o.faults.path_filter = "/importMime";
  o.faults.drop_before.every_nth = 1;
  Start(o);
  HttpResult r = Import(Mime("<lost@x>"));
  EXPECT_EQ(r.code, CURLE_GOT_NOTHING);
  EXPECT_FALSE(server_.FindMessage(kAlice, "<lost@x>").has_value());
  EXPECT_EQ(server_.Stats(kAlice).dropped_before, 1u);
}

TEST_F(FakeGraphTest, FakeGraphFaultsDropAfterStoresTheItem) {
  FakeGraphServerOptions o = DefaultOptions();
  o.faults.path_filter = "/importMime";
  o.faults.drop_after.every_nth = 1;
  Start(o);
  HttpResult r = Import(Mime("<stored@x>"));
  EXPECT_EQ(r.code, CURLE_GOT_NOTHING);
  // The client never saw the 201, but the item exists: it must look it up
  // before re-sending, or it creates a duplicate.
  EXPECT_TRUE(server_.FindMessage(kAlice, "<stored@x>").has_value());
  server_.SetFaults(FakeGraphFaults{});
  r = Get(std::string("/v1.0/users/") + kAlice + "/mailFolders/inbox/messages?$filter=" +
          codec::PercentEncode("internetMessageId eq '<stored@x>'") + "&$select=id");
  EXPECT_NE(r.body.find("\"id\""), std::string::npos);
  EXPECT_EQ(server_.Stats(kAlice).dropped_after, 1u);
}

TEST_F(FakeGraphTest, FakeGraphFaultsInjected429AndTokenEndpoint) {
  FakeGraphServerOptions o = DefaultOptions();
  o.faults.path_filter = "/oauth2/";
  o.faults.error.every_nth = 1;
  Start(o);
  HttpResult r = PostToken(TokenBody(std::string("&client_secret=") + kSecret));
  EXPECT_EQ(r.status, 503);
  FakeGraphFaults f;
  f.path_filter = "/mailFolders";
  f.error.every_nth = 2;
  f.error_status = 429;
  f.error_retry_after_s = 2;
  server_.SetFaults(f);
  EXPECT_EQ(Get(std::string("/v1.0/users/") + kAlice + "/mailFolders").status, 200);
  r = Get(std::string("/v1.0/users/") + kAlice + "/mailFolders");
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.Header("retry-after"), "2");
  EXPECT_EQ(server_.Stats(kAlice).throttled, 1u);
  // Injected throttling is not the client's fault; ignoring it is.
  EXPECT_EQ(server_.TotalViolations(), 0u);
  server_.AdvanceClock(milliseconds(300));
  Get(std::string("/v1.0/users/") + kAlice + "/mailFolders");
  EXPECT_EQ(server_.Stats(kAlice).violation_count(FakeGraphViolation::kIgnoredRetryAfter), 1u);
}

// ===========================================================================
// $batch

TEST_F(FakeGraphTest, FakeGraphBatchRunsEachRequestAgainstTheLimits) {
  Start();
  std::string user = std::string("/users/") + kAlice;
  std::string mime_b64 = codec::Base64Encode(Mime("<b2@x>"));
  std::string batch =
      "{\"requests\":["
      "{\"id\":\"1\",\"method\":\"POST\",\"url\":\"" + user + "/mailFolders/inbox/messages\","
      "\"headers\":{\"Content-Type\":\"application/json\"},\"body\":{\"subject\":\"b1\",\"internetMessageId\":\"<b1@x>\"}},"
      // A non-JSON body is base64 of the HTTP body (which for MIME is base64 already).
      "{\"id\":\"2\",\"method\":\"POST\",\"url\":\"" + user + "/mailFolders/inbox/importMime\","
      "\"headers\":{\"Content-Type\":\"text/plain\"},\"body\":\"" + codec::Base64Encode(mime_b64) + "\"},"
      "{\"id\":\"3\",\"method\":\"GET\",\"url\":\"" + user + "/mailFolders/inbox/messages/$count\"},"
      "{\"id\":\"4\",\"method\":\"GET\",\"url\":\"/users/nobody@contoso.test/mailFolders\"}]}";
  HttpResult r = Request("POST", base_ + "/beta/$batch", Auth({"Content-Type: application/json"}), &batch);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_NE(r.body.find("{\"id\":\"1\",\"status\":201"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("{\"id\":\"2\",\"status\":201"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("{\"id\":\"4\",\"status\":404"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("\"body\":\"" + codec::Base64Encode("2") + "\""), std::string::npos);  // text/plain count
  EXPECT_TRUE(server_.FindMessage(kAlice, "<b1@x>")->is_draft);
  EXPECT_FALSE(server_.FindMessage(kAlice, "<b2@x>")->is_draft);
  EXPECT_EQ(server_.Stats(kAlice).requests, 3u);  // each individual request counts
  // More than 20 requests is refused as a whole.
  std::string big = "{\"requests\":[";
  for (int i = 0; i < 21; ++i) {
    big += std::string(i ? "," : "") + "{\"id\":\"" + std::to_string(i) + "\",\"method\":\"GET\",\"url\":\"" + user + "\"}";
  }
  big += "]}";
  EXPECT_EQ(Request("POST", base_ + "/v1.0/$batch", Auth({"Content-Type: application/json"}), &big).status, 400);
}

TEST_F(FakeGraphTest, FakeGraphBatchDependsOnAndFailedDependency) {
  Start();
  std::string user = std::string("/users/") + kAlice;
  std::string batch =
      "{\"requests\":["
      "{\"id\":\"a\",\"method\":\"GET\",\"url\":\"" + user + "/mailFolders/AAMkADmissing=\"},"
      "{\"id\":\"b\",\"dependsOn\":[\"a\"],\"method\":\"POST\",\"url\":\"" + user + "/mailFolders\","
      "\"headers\":{\"Content-Type\":\"application/json\"},\"body\":{\"displayName\":\"never\"}}]}";
  HttpResult r = Request("POST", base_ + "/v1.0/$batch", Auth({"Content-Type: application/json"}), &batch);
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("{\"id\":\"a\",\"status\":404"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("{\"id\":\"b\",\"status\":424"), std::string::npos) << r.body;
  EXPECT_EQ(server_.Folders(kAlice).size(), 9u);
}

TEST_F(FakeGraphTest, FakeGraphBatchParallelRequestsShareTheConcurrencyLimit) {
  FakeGraphServerOptions o = DefaultOptions();
  o.faults.path_filter = "/inbox/messages";
  o.faults.delay.every_nth = 1;
  o.faults.delay_by = milliseconds(500);
  Start(o);
  token_ = Token();
  // One slow request holds a slot while a batch runs 4 requests at once.
  std::thread slow([&] { Get(std::string("/v1.0/users/") + kAlice + "/mailFolders/inbox/messages"); });
  std::this_thread::sleep_for(milliseconds(150));
  std::string user = std::string("/users/") + kAlice;
  std::string batch = "{\"requests\":[";
  for (int i = 0; i < 4; ++i) {
    batch += std::string(i ? "," : "") + "{\"id\":\"" + std::to_string(i) + "\",\"method\":\"GET\",\"url\":\"" + user +
             "/mailFolders\"}";
  }
  batch += "]}";
  HttpResult r = Request("POST", base_ + "/v1.0/$batch", Auth({"Content-Type: application/json"}), &batch);
  slow.join();
  ASSERT_EQ(r.status, 200);  // the batch itself succeeds...
  EXPECT_NE(r.body.find("\"status\":429"), std::string::npos) << r.body;  // ...one request in it does not
  EXPECT_NE(r.body.find("\"Retry-After\":\"1\""), std::string::npos);
  EXPECT_EQ(server_.Stats(kAlice).violation_count(FakeGraphViolation::kConcurrency), 1u);
}

// ===========================================================================
// Inspection, stats, reset, the binary

TEST_F(FakeGraphTest, FakeGraphStatsEndpointAndReset) {
  Start();
  ASSERT_EQ(Import(Mime("<s@x>")).status, 201);
  MakeFolder("Kept?");
  HttpResult r = Request("GET", base_ + "/_fake/stats");
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("\"alice@contoso.test\":{"), std::string::npos);
  EXPECT_NE(r.body.find("\"total_violations\":0"), std::string::npos);
  EXPECT_NE(r.body.find("\"messages\":1"), std::string::npos);
  EXPECT_EQ(r.body, server_.StatsJson());
  r = Request("GET", base_ + "/_fake/messages?mailbox=" + kAlice);
  EXPECT_NE(r.body.find("\"internetMessageId\":\"<s@x>\""), std::string::npos);
  EXPECT_NE(r.body.find("\"source\":\"importMime\""), std::string::npos);
  // /_fake is neither authenticated nor counted.
  EXPECT_EQ(server_.Stats(kAlice).requests, 2u);
  EXPECT_EQ(Request("POST", base_ + "/_fake/reset").status, 204);
  EXPECT_TRUE(server_.Messages(kAlice).empty());
  EXPECT_EQ(server_.Folders(kAlice).size(), 9u);
  EXPECT_EQ(server_.Stats(kAlice).requests, 0u);
  EXPECT_EQ(Get(std::string("/v1.0/users/") + kAlice + "/mailFolders").status, 401);  // tokens are gone too
}

TEST(FakeGraphBinary, PrintsPortServesAndReportsOnSigterm) {
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  std::vector<std::string> args = {WXA_FAKE_GRAPH_BIN, "--mailbox", "a@contoso.test,b@contoso.test",
                                   "--mailbox-count", "2", "--max-concurrent=2", "--app", "cli:pw"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, WXA_FAKE_GRAPH_BIN, &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  std::string output;
  char buf[4096];
  while (output.find('\n') == std::string::npos) {
    ssize_t n = read(out[0], buf, sizeof buf);
    ASSERT_GT(n, 0);
    output.append(buf, size_t(n));
  }
  int port = std::stoi(output.substr(0, output.find('\n')));
  std::string base = "http://127.0.0.1:" + std::to_string(port);
  std::string form = "grant_type=client_credentials&client_id=cli&client_secret=pw&scope=" + std::string(kScope);
  HttpResult r = Request("POST", base + "/" + std::string(kTenant) + "/oauth2/v2.0/token", {}, &form);
  EXPECT_EQ(r.status, 200) << r.body;
  r = Request("GET", base + "/_fake/stats");
  EXPECT_NE(r.body.find("user1@contoso.test"), std::string::npos);
  EXPECT_NE(r.body.find("b@contoso.test"), std::string::npos);
  kill(pid, SIGTERM);
  ssize_t n;
  while ((n = read(out[0], buf, sizeof buf)) > 0) output.append(buf, size_t(n));
  close(out[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_NE(output.find("\"token_requests\":1"), std::string::npos) << output;
}

}  // namespace
}  // namespace wxa::test
