// Registered models. Offline: the client's SHA-256 against FIPS 180-4's examples. With
// --live: the model vectors (tests/clients/model_vectors.py) against a live server
// (ASSAY_TARGET=host:port, ASSAY_MODEL_VECTORS=directory of model.json and model.onnx):
// register the model, append its token ids to a pool as model_inputs.<name>, label the
// listed items, run every case (on the pool or inline), compare indices exactly and scores
// within the case's tolerance, and delete the pool and the model. Exit 77 (skipped) when
// either variable is unset.
#include <cmath>
#include <deque>
#include <iostream>
#include <string>
#include <nlohmann/json.hpp>

#include "assay/client.h"
#include "common.h"

using json = nlohmann::ordered_json;  // keeps model.json's input order (the graph's)

namespace {

constexpr const char* kModel = "text-cpp";
constexpr const char* kPool = "texts-cpp";

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

void digests() {
  expect(assay::sha256_hex("") ==
             "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
         "sha256 of the empty string");
  expect(assay::sha256_hex("abc") ==
             "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
         "sha256 of abc");
  expect(assay::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
             "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
         "sha256 of the 448-bit message (two blocks of padding)");
  expect(assay::sha256_hex(std::string(1'000'000, 'a')) ==
             "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
         "sha256 of a million a");
}

// Owns the arrays of model.json's inputs; TensorViews point into it.
struct Arrays {
  std::deque<std::vector<std::int64_t>> i64;
  std::deque<std::vector<std::int32_t>> i32;
  std::deque<std::vector<float>> f32;
  std::deque<std::vector<double>> f64;

  // {dtype: numpy name, shape, data}.
  assay::TensorView view(const json& t) {
    const std::string dtype = t.at("dtype");
    const auto shape = t.at("shape").get<std::vector<std::int64_t>>();
    const json& data = t.at("data");
    if (dtype == "int64") {
      i64.push_back(data.get<std::vector<std::int64_t>>());
      return assay::TensorView::i64(i64.back(), shape);
    }
    if (dtype == "int32") {
      i32.push_back(data.get<std::vector<std::int32_t>>());
      return assay::TensorView::i32(i32.back(), shape);
    }
    if (dtype == "float32") {
      std::vector<float> v;
      for (const auto& x : data) v.push_back(static_cast<float>(x.get<double>()));
      f32.push_back(std::move(v));
      return assay::TensorView::f32(f32.back(), shape);
    }
    if (dtype == "float64") {
      f64.push_back(data.get<std::vector<double>>());
      return assay::TensorView::f64(f64.back(), shape);
    }
    throw std::runtime_error("unknown dtype in model.json: " + dtype);
  }
};

// Deletes the pool and the model a killed earlier run may have left.
void forget(assay::Client& client) {
  try {
    client.delete_pool(kPool);
  } catch (const assay::Error&) {
  }
  try {
    client.delete_model(kModel);
  } catch (const assay::Error&) {
  }
}

// One case of model.json; returns an empty string on success, else what differed.
std::string run_case(assay::Client& client, const json& c,
                     const std::vector<std::pair<std::string, assay::TensorView>>& raw,
                     const std::string& provider) {
  assay::SelectOptions s;
  s.strategy = c.at("strategy");
  s.budget = c.at("budget");
  s.model_ids = {kModel};
  s.mc_samples = c.at("mc_samples");
  s.batch_size = c.at("batch_size");
  s.seed = c.at("seed").get<std::uint64_t>();
  if (c.at("source") == "pool") {
    s.pool_id = kPool;
  } else {
    for (const auto& [name, view] : raw) s.inputs.emplace(name, view);
  }
  const assay::Selection sel = client.select(s);
  const auto want = c.at("indices").get<std::vector<std::int64_t>>();
  const auto scores = c.at("scores").get<std::vector<double>>();
  const double rtol = c.at("tolerance");
  if (sel.indices != want) return "indices differ";
  if (sel.scores.size() != scores.size()) return "score count differs";
  for (std::size_t i = 0; i < scores.size(); ++i) {
    if (std::abs(sel.scores[i] - scores[i]) > 1e-9 + rtol * std::abs(scores[i])) {
      return "score " + std::to_string(i) + ": " + std::to_string(sel.scores[i]) + " vs " +
             std::to_string(scores[i]);
    }
  }
  if (sel.execution_providers != std::vector<std::string>{provider}) {
    return "execution providers differ (want " + provider + ")";
  }
  return {};
}

void live(const std::string& target, const std::string& directory) {
  const json v = json::parse(assay::read_file(directory + "/model.json"));
  const std::string path = directory + "/" + v.at("model_file").get<std::string>();
  const std::string onnx = assay::read_file(path);
  const auto outputs = v.at("outputs").get<std::map<std::string, std::string>>();
  Arrays arrays;
  std::vector<std::pair<std::string, assay::TensorView>> raw;  // model_inputs.<name>
  for (const auto& [name, t] : v.at("inputs").items()) {
    raw.emplace_back("model_inputs." + name, arrays.view(t));
  }
  assay::Client client(target, options_from_env());
  forget(client);

  // A binding to a graph input the model does not have stores nothing.
  try {
    client.register_model(kModel, onnx, outputs, {{"no_such_input", "model_inputs.input_ids"}});
    expect(false, "a binding to a missing graph input was accepted");
  } catch (const assay::Error& e) {
    expect(e.code() == grpc::StatusCode::INVALID_ARGUMENT,
           std::string("missing graph input, code: ") + e.code_name());
    expect(e.reason() == "INPUT_NOT_FOUND", "missing graph input, reason: " + e.reason());
    expect(e.field() == "header.inputs[0].input_name",
           "missing graph input, field: " + e.field());
  }

  // Small chunks, so the file goes in several.
  const assay::Model model = client.register_model_file(kModel, path, outputs, {}, 64 << 10);
  try {
    expect(model.model_id == kModel, "model id: " + model.model_id);
    expect(model.outputs == outputs, "outputs as registered");
    expect(model.sha256 == assay::sha256_hex(onnx), "sha256: " + model.sha256);
    expect(model.size_bytes == static_cast<std::int64_t>(onnx.size()), "size");
    expect(model.dropout_count > 0, "dropout nodes counted");
    expect(model.inputs.size() == raw.size(), "one input per array of model.json");
    for (std::size_t i = 0; i < std::min(model.inputs.size(), raw.size()); ++i) {
      expect(model.inputs[i].array == raw[i].first,
             "input " + model.inputs[i].name + " reads " + model.inputs[i].array);
      expect(model.inputs[i].dtype == raw[i].second.dtype(),
             "input " + model.inputs[i].name + " dtype");
      expect(model.inputs[i].shape.size() == raw[i].second.shape().size(),
             "input " + model.inputs[i].name + " rank");
    }
    expect(client.get_model(kModel).sha256 == model.sha256, "get_model");
    int listed = 0;
    for (const auto& m : client.list_models(1)) listed += m.model_id == kModel;
    expect(listed == 1, "list_models (one per page) lists the model once");

    client.create_pool(kPool);
    const auto appended = client.append(kPool, raw);
    for (const auto& [name, view] : raw) {
      bool found = false;
      for (const auto& a : appended.pool.arrays) found = found || a.name == name;
      expect(found, "pool array " + name);
    }
    client.label(kPool, v.at("labeled").get<std::vector<std::int64_t>>(),
                 v.at("labels").get<std::vector<std::int64_t>>());
    int passed = 0, failed = 0;
    for (const auto& c : v.at("cases")) {
      std::string problem;
      try {
        problem = run_case(client, c, raw, v.at("execution_provider").get<std::string>());
      } catch (const std::exception& e) {
        problem = e.what();
      }
      if (problem.empty()) {
        ++passed;
      } else {
        ++failed;
        std::cerr << "FAILED " << c.at("name").get<std::string>() << " (seed "
                  << c.at("seed") << "): " << problem << "\n";
      }
    }
    // A round's replace may name the raw inputs too: the same token ids again give a new
    // pool version and the same answer (the cases' first on the pool).
    const std::int64_t version = appended.pool.version;
    const assay::Pool replaced = client.replace(kPool, {raw.front()});
    expect(replaced.version > version, "replace of " + raw.front().first + " gave a new version");
    for (const auto& c : v.at("cases")) {
      if (c.at("source") != "pool") continue;
      std::string problem;
      try {
        problem = run_case(client, c, raw, v.at("execution_provider").get<std::string>());
      } catch (const std::exception& e) {
        problem = e.what();
      }
      ++(problem.empty() ? passed : failed);
      if (!problem.empty()) {
        std::cerr << "FAILED " << c.at("name").get<std::string>() << " after replace: "
                  << problem << "\n";
      }
      break;
    }
    std::cout << "model cases: " << passed << " passed, " << failed << " failed\n";
    failures += failed;
  } catch (...) {
    forget(client);
    throw;
  }
  client.delete_pool(kPool);
  client.delete_model(kModel);
  try {
    client.get_model(kModel);
    expect(false, "get_model of a deleted model did not throw");
  } catch (const assay::Error& e) {
    expect(e.code() == grpc::StatusCode::NOT_FOUND && e.reason() == "MODEL_NOT_FOUND",
           std::string("deleted model: ") + e.what());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--live") {
    const std::string target = env_or("ASSAY_TARGET");
    const std::string directory = env_or("ASSAY_MODEL_VECTORS");
    if (target.empty() || directory.empty()) {
      std::cout << "ASSAY_TARGET or ASSAY_MODEL_VECTORS is not set: no server or model "
                   "vectors to test against, skipped\n";
      return 77;
    }
    try {
      live(target, directory);
    } catch (const std::exception& e) {
      expect(false, e.what());
    }
  } else {
    digests();
  }
  std::cout << "model: " << (failures ? "FAILED" : "passed") << "\n";
  return failures ? 1 : 0;
}
