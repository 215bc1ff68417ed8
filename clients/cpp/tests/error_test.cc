// The error type's own tests: assay::Error decodes code, reason, field and retry delay from
// a status built here; with --live, from a live server's (ASSAY_TARGET=host:port; exit 77,
// skipped, when unset).
#include <chrono>
#include <iostream>
#include <string>

#include "assay/client.h"
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
  }
  std::cout << "error: " << (failures ? "FAILED" : "passed") << "\n";
  return failures ? 1 : 0;
}
