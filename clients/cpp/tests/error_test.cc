// The error type's own tests: assay::Error decodes code, reason, field and retry delay from
// a status built here; with --live, from a live server's (ASSAY_TARGET=host:port; exit 77,
// skipped, when unset). Retries come from the contract's service config, with one deadline
// per call: an in-process server counts the attempts (tests/clients/test_service_config.py
// has the same tests for the Python client).
#include <atomic>
#include <chrono>
#include <iostream>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include "assay/client.h"
#include "assay/v1/assay.grpc.pb.h"
#include "common.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

grpc::Status rich_status() {
  google::rpc::Status status;
  status.set_code(static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  status.set_message("busy");
  google::rpc::ErrorInfo other;
  other.set_reason("OTHER");
  other.set_domain("example.com");
  status.add_details()->PackFrom(other);
  google::rpc::ErrorInfo info;
  info.set_reason("TOO_MANY_REQUESTS");
  info.set_domain("assay.v1");
  (*info.mutable_metadata())["field"] = "pool_id";
  status.add_details()->PackFrom(info);
  google::rpc::RetryInfo retry;
  retry.mutable_retry_delay()->set_seconds(1);
  retry.mutable_retry_delay()->set_nanos(250'000'000);
  status.add_details()->PackFrom(retry);
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "busy", status.SerializeAsString());
}

void decoding() {
  const assay::Error e = assay::Error::from_status(rich_status());
  expect(e.code() == grpc::StatusCode::RESOURCE_EXHAUSTED, "code");
  expect(e.reason() == "TOO_MANY_REQUESTS", "reason: " + e.reason());
  expect(e.field() == "pool_id", "field: " + e.field());
  expect(e.retry_delay() == std::chrono::milliseconds(1250), "retry delay");
  expect(std::string(e.what()) == "RESOURCE_EXHAUSTED TOO_MANY_REQUESTS: busy",
         std::string("what: ") + e.what());

  const assay::Error bare =
      assay::Error::from_status(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down"));
  expect(bare.reason().empty() && bare.field().empty() && !bare.retry_delay(),
         "a status without details has no reason");
  const assay::Error garbled = assay::Error::from_status(
      grpc::Status(grpc::StatusCode::INTERNAL, "x", std::string("\xff\xff", 2)));
  expect(garbled.code() == grpc::StatusCode::INTERNAL && garbled.reason().empty(),
         "unreadable details keep the code");
}

// Answers UNAVAILABLE to the first `failures` attempts (each after `delay`), then OK.
class Flaky final : public assay::v1::AssayService::Service {
 public:
  Flaky(int failures, std::chrono::milliseconds delay) : failures_(failures), delay_(delay) {}
  std::atomic<int> attempts{0};
  std::set<std::string> request_ids;

  grpc::Status Select(grpc::ServerContext*, const assay::v1::SelectRequest* req,
                      assay::v1::SelectResponse* resp) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      request_ids.insert(req->request_id());
    }
    if (auto s = attempt(); !s.ok()) return s;
    resp->add_indices(1);
    resp->add_scores(0.5);
    resp->set_strategy(req->strategy());
    resp->set_request_id(req->request_id());
    return grpc::Status::OK;
  }
  grpc::Status CreatePool(grpc::ServerContext*, const assay::v1::CreatePoolRequest* req,
                          assay::v1::CreatePoolResponse* resp) override {
    if (auto s = attempt(); !s.ok()) return s;
    resp->mutable_pool()->set_pool_id(req->pool_id());
    return grpc::Status::OK;
  }

 private:
  grpc::Status attempt() {
    const int n = ++attempts;
    std::this_thread::sleep_for(delay_);
    if (n <= failures_) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "attempt " + std::to_string(n) + ": restarting");
    }
    return grpc::Status::OK;
  }
  const int failures_;
  const std::chrono::milliseconds delay_;
  std::mutex mu_;
};

struct FlakyServer {
  Flaky service;
  std::unique_ptr<grpc::Server> server;
  std::string target;
  FlakyServer(int failures, std::chrono::milliseconds delay) : service(failures, delay) {
    int port = 0;
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    target = "127.0.0.1:" + std::to_string(port);
  }
  ~FlakyServer() { server->Shutdown(std::chrono::system_clock::now()); }
};

assay::SelectOptions flaky_select() {
  static const std::vector<float> probs{0.5f, 0.5f, 0.5f, 0.5f};
  assay::SelectOptions s{.strategy = "entropy", .budget = 1};
  s.inputs.emplace("probs", assay::TensorView::f32(probs, {2, 2}));
  return s;
}

void retries() {
  {  // UNAVAILABLE twice is retried by the service config.
    FlakyServer f(2, std::chrono::milliseconds(0));
    assay::ClientOptions o;
    o.timeout = std::chrono::seconds(30);
    assay::Client client(f.target, o);
    try {
      const auto sel = client.select(flaky_select());
      expect(sel.indices == std::vector<std::int64_t>{1}, "indices after retries");
    } catch (const assay::Error& e) {
      expect(false, std::string("select after two UNAVAILABLE: ") + e.what());
    }
    expect(f.service.attempts == 3, "attempts: " + std::to_string(f.service.attempts));
    expect(f.service.request_ids.size() == 1, "one request id over the attempts");
  }
  {  // One deadline covers every attempt: each takes 0.4 s on the server, so a 4th could
     // start at 1.2 s at the earliest, after the one 1 s deadline.
    FlakyServer f(10, std::chrono::milliseconds(400));
    assay::ClientOptions o;
    o.timeout = std::chrono::seconds(1);
    assay::Client client(f.target, o);
    try {
      client.select(flaky_select());
      expect(false, "a server that is always UNAVAILABLE answered");
    } catch (const assay::Error& e) {
      expect(e.code() == grpc::StatusCode::DEADLINE_EXCEEDED, std::string("code: ") + e.what());
    }
    expect(f.service.attempts >= 1 && f.service.attempts <= 3,
           "attempts within one 1 s deadline: " + std::to_string(f.service.attempts));
  }
  {  // Methods outside the config, and a client with retries off, send once.
    FlakyServer f(1, std::chrono::milliseconds(0));
    assay::Client client(f.target);
    try {
      client.create_pool("p");
      expect(false, "CreatePool answered after one UNAVAILABLE");
    } catch (const assay::Error& e) {
      expect(e.code() == grpc::StatusCode::UNAVAILABLE, std::string("code: ") + e.what());
    }
    expect(f.service.attempts == 1, "CreatePool attempts: " + std::to_string(f.service.attempts));
    FlakyServer g(1, std::chrono::milliseconds(0));
    assay::ClientOptions o;
    o.retries = 0;
    assay::Client once(g.target, o);
    try {
      once.select(flaky_select());
      expect(false, "select with retries off answered after one UNAVAILABLE");
    } catch (const assay::Error& e) {
      expect(e.code() == grpc::StatusCode::UNAVAILABLE, std::string("code: ") + e.what());
    }
    expect(g.service.attempts == 1, "attempts, retries off: " + std::to_string(g.service.attempts));
  }
  expect(assay::service_config(1).find("\"maxAttempts\":2") != std::string::npos,
         "service_config(1): " + assay::service_config(1));
}

void live(const std::string& target) {
  assay::Client client(target, options_from_env());
  try {
    client.get_pool("no-such-pool-cpp");
    expect(false, "get_pool of a missing pool did not throw");
  } catch (const assay::Error& e) {
    expect(e.code() == grpc::StatusCode::NOT_FOUND, std::string("code: ") + e.code_name());
    expect(e.reason() == "POOL_NOT_FOUND", "reason: " + e.reason());
    expect(e.field() == "pool_id", "field: " + e.field());
    expect(!e.retry_delay(), "no retry delay on NOT_FOUND");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--live") {
    const std::string target = env_or("ASSAY_TARGET");
    if (target.empty()) {
      std::cout << "ASSAY_TARGET is not set: no server to test against, skipped\n";
      return 77;
    }
    live(target);
  } else {
    decoding();
    retries();
  }
  std::cout << "error: " << (failures ? "FAILED" : "passed") << "\n";
  return failures ? 1 : 0;
}
