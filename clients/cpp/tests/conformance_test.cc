// Runs tests/vectors/select_vectors.json against a live server (ASSAY_TARGET=host:port):
// indices must match exactly, scores within the case's tolerance, errors by status code.
// With --client-checks, checks the client's own behaviour instead (retries, deadlines,
// idempotency, pools, auth). Exit 77 (skipped) when ASSAY_TARGET is unset.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>
#include <nlohmann/json.hpp>

#include "common.h"

using json = nlohmann::json;

namespace {

// Owns the arrays of one case; TensorViews point into it.
struct Arrays {
  std::deque<std::vector<float>> f32;
  std::deque<std::vector<double>> f64;
  std::deque<std::vector<std::int32_t>> i32;
  std::deque<std::vector<std::int64_t>> i64;
  std::deque<std::vector<std::uint16_t>> u16;

  assay::TensorView view(const json& t) {
    const std::string dtype = t.at("dtype");
    std::vector<std::int64_t> shape = t.at("shape").get<std::vector<std::int64_t>>();
    if (t.contains("bits")) {
      u16.push_back(t.at("bits").get<std::vector<std::uint16_t>>());
      if (dtype == "FP16") return assay::TensorView::f16_bits(u16.back(), shape);
      if (dtype == "BF16") return assay::TensorView::bf16_bits(u16.back(), shape);
    } else if (dtype == "FP32") {
      std::vector<float> v;
      for (const auto& x : t.at("values")) v.push_back(static_cast<float>(x.get<double>()));
      f32.push_back(std::move(v));
      return assay::TensorView::f32(f32.back(), shape);
    } else if (dtype == "FP64") {
      f64.push_back(t.at("values").get<std::vector<double>>());
      return assay::TensorView::f64(f64.back(), shape);
    } else if (dtype == "INT32") {
      i32.push_back(t.at("values").get<std::vector<std::int32_t>>());
      return assay::TensorView::i32(i32.back(), shape);
    } else if (dtype == "INT64") {
      i64.push_back(t.at("values").get<std::vector<std::int64_t>>());
      return assay::TensorView::i64(i64.back(), shape);
    }
    throw std::runtime_error("unknown dtype in vectors: " + dtype);
  }
};

assay::Param param(const json& p) {
  if (p.contains("double")) return assay::Param(p["double"].get<double>());
  if (p.contains("int")) return assay::Param(p["int"].get<std::int64_t>());
  if (p.contains("bool")) return assay::Param(p["bool"].get<bool>());
  return assay::Param(p.at("string").get<std::string>());
}

// Returns an empty string on success, else what differed.
std::string run_case(assay::Client& client, const json& c) {
  Arrays arrays;
  assay::SelectOptions s;
  s.strategy = c.at("strategy");
  s.budget = c.at("budget");
  if (c.contains("seed")) s.seed = c["seed"].get<std::uint64_t>();
  if (c.contains("exclude")) s.exclude = c["exclude"].get<std::vector<std::int64_t>>();
  if (c.contains("params"))
    for (const auto& [k, v] : c["params"].items()) s.params.emplace(k, param(v));
  std::string pool_id;
  const json& expect = c.at("expect");
  std::string problem;
  try {
    if (c.contains("pool")) {
      pool_id = "cpp-" + assay::new_request_id().substr(0, 12);
      client.create_pool(pool_id);
      const std::size_t chunk = c["pool"]["chunk_bytes"];
      for (const auto& part : c["pool"]["appends"]) {
        std::vector<std::pair<std::string, assay::TensorView>> views;
        for (const auto& [role, t] : part.items()) views.emplace_back(role, arrays.view(t));
        client.append(pool_id, views, chunk);
      }
      if (c["pool"].contains("label")) {
        auto idx = c["pool"]["label"]["indices"].get<std::vector<std::int64_t>>();
        auto lab = c["pool"]["label"]["labels"].get<std::vector<std::int64_t>>();
        client.label(pool_id, idx, lab);
      }
      s.pool_id = pool_id;
    } else {
      for (const auto& [role, t] : c.at("inputs").items()) s.inputs.emplace(role, arrays.view(t));
    }
    try {
      assay::Selection sel = client.select(s);
      if (expect.contains("error")) {
        problem = "expected " + expect["error"].get<std::string>() + ", got a selection";
      } else if (sel.indices != expect["indices"].get<std::vector<std::int64_t>>()) {
        problem = "indices differ";
      } else {
        std::vector<double> want;
        for (const auto& v : expect["scores"]) {
          if (v.is_number()) want.push_back(v.get<double>());
          else if (v == "Infinity") want.push_back(INFINITY);
          else if (v == "-Infinity") want.push_back(-INFINITY);
          else want.push_back(NAN);
        }
        const double rtol = expect["rtol"], atol = expect["atol"];
        if (want.size() != sel.scores.size()) problem = "score count differs";
        for (std::size_t i = 0; problem.empty() && i < want.size(); ++i) {
          const bool same =
              std::isfinite(want[i])
                  ? std::fabs(sel.scores[i] - want[i]) <= atol + rtol * std::fabs(want[i])
                  : (sel.scores[i] == want[i] || (std::isnan(want[i]) && std::isnan(sel.scores[i])));
          if (!same)
            problem = "score " + std::to_string(i) + " differs: " +
                      std::to_string(sel.scores[i]) + " vs " + std::to_string(want[i]);
        }
        auto pli = expect.value("pseudo_label_indices", std::vector<std::int64_t>{});
        auto pl = expect.value("pseudo_labels", std::vector<std::int64_t>{});
        if (problem.empty() && (sel.pseudo_label_indices != pli || sel.pseudo_labels != pl))
          problem = "pseudo labels differ";
      }
    } catch (const assay::Error& e) {
      if (!expect.contains("error")) problem = std::string("unexpected error ") + e.what();
      else if (expect["error"] != e.code_name())
        problem = "expected " + expect["error"].get<std::string>() + ", got " + e.what();
    }
  } catch (const std::exception& e) {
    problem = std::string("setup failed: ") + e.what();
  }
  if (!pool_id.empty()) {
    try {
      client.delete_pool(pool_id);
    } catch (const std::exception& e) {
      if (problem.empty()) problem = std::string("delete_pool failed: ") + e.what();
    }
  }
  return problem;
}

int run_vectors(const std::string& target) {
  std::ifstream f(env_or("ASSAY_VECTORS", ASSAY_VECTORS));
  const json doc = json::parse(f);
  assay::Client client(target, options_from_env());
  int passed = 0, failed = 0;
  for (const auto& c : doc.at("cases")) {
    const std::string problem = run_case(client, c);
    if (problem.empty()) {
      ++passed;
    } else {
      ++failed;
      std::cout << "FAIL " << c["name"].get<std::string>() << ": " << problem << "\n";
    }
  }
  std::cout << "conformance: " << passed << " passed, " << failed << " failed\n";
  return failed ? 1 : 0;
}

int run_client_checks(const std::string& target) {
  int passed = 0, failed = 0;
  auto check = [&](const char* name, const std::function<void()>& body) {
    try {
      body();
      ++passed;
    } catch (const std::exception& e) {
      ++failed;
      std::cout << "FAIL " << name << ": " << e.what() << "\n";
    }
  };
  auto require = [](bool ok, const std::string& what) {
    if (!ok) throw std::runtime_error(what);
  };
  assay::Client client(target, options_from_env());
  std::vector<float> probs{0.9f, 0.1f, 0.5f, 0.5f, 0.6f, 0.4f, 0.99f, 0.01f};

  check("list_strategies", [&] {
    auto all = client.list_strategies();
    bool found = false;
    for (const auto& s : all)
      if (s.name == "entropy")
        found = s.required_inputs == std::vector<std::string>{"probs"} && s.kind == "score";
    require(found, "entropy with required input probs not listed");
  });
  check("retry with the same request id answers identically", [&] {
    assay::SelectOptions s{.strategy = "entropy", .budget = 2};
    s.inputs.emplace("probs", assay::TensorView::f32(probs, {4, 2}));
    s.request_id = assay::new_request_id();
    auto a = client.select(s), b = client.select(s);
    require(a.indices == std::vector<std::int64_t>{1, 2}, "wrong entropy answer");
    require(a.indices == b.indices && a.seed == b.seed && b.request_id == s.request_id,
            "a retried request id gave a different answer");
    s.budget = 3;  // same id, different request
    try {
      client.select(s);
      require(false, "reusing a request id for another request was accepted");
    } catch (const assay::Error& e) {
      require(e.code() == grpc::StatusCode::FAILED_PRECONDITION, e.what());
    }
  });
  check("UNAVAILABLE is retried by the service config, then raised", [&] {
    // error_test counts the attempts.
    assay::ClientOptions o;
    o.retries = 2;
    o.timeout = std::chrono::seconds(2);
    assay::Client dead("127.0.0.1:1", o);
    assay::SelectOptions s{.strategy = "entropy", .budget = 1};
    s.inputs.emplace("probs", assay::TensorView::f32(probs, {4, 2}));
    try {
      dead.select(s);
      require(false, "a dead target answered");
    } catch (const assay::Error& e) {
      require(e.code() == grpc::StatusCode::UNAVAILABLE, e.what());
    }
  });
  check("deadline on every call", [&] {
    std::vector<float> big(400'000 * 10, 0.1f);
    assay::SelectOptions s{.strategy = "entropy", .budget = 1};
    s.inputs.emplace("probs", assay::TensorView::f32(big, {400'000, 10}));
    s.timeout = std::chrono::milliseconds(1);
    try {
      client.select(s);
      require(false, "a 1 ms deadline was met by a 16 MB request");
    } catch (const assay::Error& e) {
      require(e.code() == grpc::StatusCode::DEADLINE_EXCEEDED, e.what());
    }
  });
  check("pool lifecycle", [&] {
    const std::string id = "cpp-life-" + assay::new_request_id().substr(0, 8);
    client.create_pool(id);
    std::vector<float> emb(1000 * 3);
    for (std::size_t i = 0; i < emb.size(); ++i) emb[i] = static_cast<float>(i % 17);
    auto r = client.append(id, {{"embeddings", assay::TensorView::f32(emb, {1000, 3})}}, 1024);
    require(r.appended_count == 1000 && r.first_index == 0, "append count");
    require(r.pool.arrays.at(0).shape == std::vector<std::int64_t>{1000, 3}, "array shape");
    std::vector<std::int64_t> idx{4, 5}, lab{1, 0};
    require(client.label(id, idx, lab).labeled_count == 2, "labeled count");
    bool listed = false;
    for (const auto& p : client.list_pools(2)) listed = listed || p.pool_id == id;
    require(listed, "pool not listed");
    client.delete_pool(id);
    try {
      client.get_pool(id);
      require(false, "deleted pool still there");
    } catch (const assay::Error& e) {
      require(e.code() == grpc::StatusCode::NOT_FOUND, e.what());
    }
  });
  check("a round replaces the pool's probs", [&] {
    const std::string id = "cpp-round-" + assay::new_request_id().substr(0, 8);
    constexpr std::int64_t n = 60, c = 3;
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> u(0.05f, 1.0f);
    auto round_probs = [&] {
      std::vector<float> p(n * c);
      for (std::int64_t i = 0; i < n; ++i) {
        float sum = 0;
        for (std::int64_t j = 0; j < c; ++j) sum += p[i * c + j] = u(rng);
        for (std::int64_t j = 0; j < c; ++j) p[i * c + j] /= sum;
      }
      return p;
    };
    const std::vector<float> first = round_probs(), second = round_probs();
    client.create_pool(id);
    client.append(id, {{"probs", assay::TensorView::f32(first, {n, c})}}, 256);
    std::vector<std::int64_t> idx{7}, lab{2};
    const std::int64_t before = client.label(id, idx, lab).version;
    const assay::Pool after =
        client.replace(id, {{"probs", assay::TensorView::f32(second, {n, c})}}, 256);
    require(after.version > before, "the replace did not raise the pool version");
    require(after.item_count == n && after.labeled_count == 1, "items or labels changed");
    assay::SelectOptions from_pool{.strategy = "entropy", .budget = 5};
    from_pool.pool_id = id;
    assay::SelectOptions inline_{.strategy = "entropy", .budget = 5};
    inline_.inputs.emplace("probs", assay::TensorView::f32(second, {n, c}));
    inline_.exclude = idx;
    const assay::Selection got = client.select(from_pool), want = client.select(inline_);
    require(got.pool_version == after.version, "the select did not use the new version");
    require(got.indices == want.indices, "the pool answered from other probs");
    for (std::size_t i = 0; i < want.scores.size(); ++i)
      require(std::fabs(got.scores[i] - want.scores[i]) <= 1e-6 + 1e-6 * std::fabs(want.scores[i]),
              "score " + std::to_string(i) + " differs");
    try {  // a replace that does not cover the pool's items is refused
      client.replace(id, {{"probs", assay::TensorView::f32(std::span(second).first((n - 1) * c),
                                                          {n - 1, c})}});
      require(false, "a replace of n - 1 items was accepted");
    } catch (const assay::Error& e) {
      require(e.code() == grpc::StatusCode::INVALID_ARGUMENT, e.what());
    }
    require(client.get_pool(id).version == after.version, "a refused replace changed the pool");
    client.delete_pool(id);
  });
  if (!env_or("ASSAY_TOKEN").empty()) {
    check("a call without the bearer token is UNAUTHENTICATED", [&] {
      assay::ClientOptions o = options_from_env();
      o.token.clear();
      assay::Client anonymous(target, o);
      try {
        anonymous.list_strategies();
        require(false, "the server answered a call without a token");
      } catch (const assay::Error& e) {
        require(e.code() == grpc::StatusCode::UNAUTHENTICATED, e.what());
      }
    });
  }
  std::cout << "client: " << passed << " passed, " << failed << " failed\n";
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string target = env_or("ASSAY_TARGET");
  if (target.empty()) {
    std::cout << "ASSAY_TARGET is not set: no server to test against, skipped\n";
    return 77;
  }
  if (argc > 1 && std::string(argv[1]) == "--client-checks") return run_client_checks(target);
  return run_vectors(target);
}
