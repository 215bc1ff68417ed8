// The active-learning round loop of a C++ trainer against Assay: the code to copy.
//
// One pool lives through every round. Its arrays go up once: the features, which
// never change ("embeddings"), and the first model's class probabilities ("probs").
// The seed labels go up once too. Then each round:
//   1. select: Assay picks the next batch from the pool's current version; labeled
//      items are never picked again, so nothing is excluded by hand;
//   2. label: only the new batch's labels are sent, the earlier ones stay in the pool;
//   3. retrain on every label so far and predict the whole pool again;
//   4. replace: the new probs take the place of the old ones for all N items in one
//      streamed call; the pool gets a new version, which the next select reports.
// The pool is deleted at the end.
//
// The model stands in for yours: a nearest-centroid classifier over synthetic
// embeddings, where "retraining" is taking the class means of the labeled items.
// The run checks what the loop promises and exits 1 otherwise: each select answers
// from the version the last call left (so versions increase round by round), never
// picks an item labeled before, and the pool keeps every label sent.
//
//   example_trainer --target 127.0.0.1:50051 [--rounds 5] [--pool-size 4000]
//                   [--budget 20] [--strategy entropy] [--token T]
//                   [--tls-ca ca.pem [--tls-cert c.pem --tls-key k.pem]]
//                   [--skip-without-target]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../tests/common.h"

namespace {

constexpr int d = 16, c = 4;  // feature width, classes

// The stand-in model: fit class means on the labeled items, then write softmax
// probabilities of negative squared distances for every item. Returns the accuracy.
double retrain_and_predict(const std::vector<float>& emb, const std::vector<int>& truth,
                           const std::vector<std::int64_t>& labeled, std::vector<float>& probs) {
  const int n = static_cast<int>(truth.size());
  std::vector<std::vector<double>> mean(c, std::vector<double>(d, 0.0));
  std::vector<int> count(c, 0);
  for (auto i : labeled) {
    ++count[truth[i]];
    for (int j = 0; j < d; ++j) mean[truth[i]][j] += emb[i * d + j];
  }
  int correct = 0;
  for (int i = 0; i < n; ++i) {
    double logits[c], top = -1e300;
    for (int k = 0; k < c; ++k) {
      double dist = 0;
      for (int j = 0; j < d; ++j) {
        const double diff = emb[i * d + j] - (count[k] ? mean[k][j] / count[k] : 0.0);
        dist += diff * diff;
      }
      logits[k] = count[k] ? -2.0 * dist / d : -1e300;
      top = std::max(top, logits[k]);
    }
    double z = 0;
    for (int k = 0; k < c; ++k) z += std::exp(logits[k] - top);
    int best = 0;
    for (int k = 0; k < c; ++k) {
      probs[i * c + k] = static_cast<float>(std::exp(logits[k] - top) / z);
      if (probs[i * c + k] > probs[i * c + best]) best = k;
    }
    correct += best == truth[i];
  }
  return static_cast<double>(correct) / n;
}

void expect(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error(what);
}

}  // namespace

int main(int argc, char** argv) {
  std::string target = env_or("ASSAY_TARGET"), strategy = "entropy";
  int rounds = 5, n = 4000, budget = 20;
  bool skip_without_target = false;
  assay::ClientOptions options = options_from_env();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--target") target = next();
    else if (a == "--rounds") rounds = std::stoi(next());
    else if (a == "--pool-size") n = std::stoi(next());
    else if (a == "--budget") budget = std::stoi(next());
    else if (a == "--strategy") strategy = next();
    else if (a == "--token") options.token = next();
    else if (a == "--tls-ca") options.tls = true, options.root_certs_pem = assay::read_file(next());
    else if (a == "--tls-cert") options.client_cert_pem = assay::read_file(next());
    else if (a == "--tls-key") options.client_key_pem = assay::read_file(next());
    else if (a == "--skip-without-target") skip_without_target = true;
    else {
      std::cerr << "unknown argument " << a << "\n";
      return 2;
    }
  }
  if (target.empty()) {
    if (skip_without_target) {
      std::cout << "ASSAY_TARGET is not set: skipped\n";
      return 77;
    }
    target = "127.0.0.1:50051";
  }

  // Synthetic data: N items around C class centers; truth[i] is what a labeler says.
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.0f, 1.0f);
  std::vector<std::vector<float>> centers(c, std::vector<float>(d));
  for (auto& m : centers) for (auto& x : m) x = noise(rng) * 0.6f;
  std::vector<float> emb(static_cast<std::size_t>(n) * d);
  std::vector<int> truth(n);
  for (int i = 0; i < n; ++i) {
    truth[i] = i % c;
    for (int j = 0; j < d; ++j) emb[i * d + j] = centers[truth[i]][j] + noise(rng);
  }
  std::vector<std::int64_t> labeled{0, 1, 2, 3};  // seed set: one item per class
  std::vector<bool> is_labeled(n, false);
  for (auto i : labeled) is_labeled[i] = true;
  auto labels_of = [&](const std::vector<std::int64_t>& items) {
    std::vector<std::int64_t> out;
    for (auto i : items) out.push_back(truth[i]);
    return out;
  };

  const std::string pool = "example-trainer-cpp";
  try {
    assay::Client client(target, options);
    try {
      client.delete_pool(pool);  // a leftover of an interrupted run
    } catch (const assay::Error& e) {
      if (e.code() != grpc::StatusCode::NOT_FOUND) throw;
    }

    // Once: the pool, its features and the first model's outputs, the seed labels.
    std::vector<float> probs(static_cast<std::size_t>(n) * c);
    double accuracy = retrain_and_predict(emb, truth, labeled, probs);
    client.create_pool(pool);
    client.append(pool, {{"embeddings", assay::TensorView::f32(emb, {n, d})},
                         {"probs", assay::TensorView::f32(probs, {n, c})}},
                  64 << 10);
    std::int64_t version = client.label(pool, labeled, labels_of(labeled)).version;

    std::int64_t last_version = -1;
    for (int round = 0; round < rounds; ++round) {
      // 1. Select from the pool: no arrays travel, the server uses what it holds.
      assay::SelectOptions s{.strategy = strategy, .budget = budget};
      s.pool_id = pool;
      s.seed = 1234;
      const assay::Selection sel = client.select(s);
      expect(sel.pool_version == version && sel.pool_version > last_version,
             "round " + std::to_string(round) + ": the select used pool version " +
                 std::to_string(sel.pool_version) + ", not " + std::to_string(version));
      last_version = sel.pool_version;
      for (auto i : sel.indices) {
        expect(i >= 0 && i < n && !is_labeled[i],
               "round " + std::to_string(round) + ": item " + std::to_string(i) +
                   " was selected although labeled");
        is_labeled[i] = true;
      }
      std::printf("round %d: pool version %lld, accuracy %.3f with %zu labels; "
                  "selected %zu (best %lld, score %.4f)\n",
                  round, static_cast<long long>(sel.pool_version), accuracy, labeled.size(),
                  sel.indices.size(), static_cast<long long>(sel.indices.at(0)),
                  sel.scores.empty() ? 0.0 : sel.scores[0]);

      // 2. Label the new batch only; the pool keeps the earlier labels.
      const assay::Pool after = client.label(pool, sel.indices, labels_of(sel.indices));
      labeled.insert(labeled.end(), sel.indices.begin(), sel.indices.end());
      expect(after.labeled_count == static_cast<std::int64_t>(labeled.size()),
             "the pool holds " + std::to_string(after.labeled_count) + " labels, not " +
                 std::to_string(labeled.size()));

      // 3. Retrain on every label so far; predict the whole pool.
      accuracy = retrain_and_predict(emb, truth, labeled, probs);

      // 4. Replace the model's outputs for all N items (streamed in chunks); the
      //    embeddings and the labels stay as they are.
      version = client.replace(pool, {{"probs", assay::TensorView::f32(probs, {n, c})}},
                               64 << 10).version;
    }
    std::printf("final: accuracy %.3f with %zu labels\n", accuracy, labeled.size());
    client.delete_pool(pool);
  } catch (const assay::Error& e) {
    std::cerr << "assay call failed: " << e.what() << "\n";
    return 1;
  } catch (const std::runtime_error& e) {
    std::cerr << "check failed: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
