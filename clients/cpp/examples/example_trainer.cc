// An active-learning loop as a C++ trainer would run it against Assay.
//
// A nearest-centroid classifier over synthetic embeddings stands in for the model.
// Each round it predicts class probabilities for the whole pool, uploads pool
// embeddings and probabilities (streamed in chunks), marks what is labeled so far,
// asks Assay for the next batch, "labels" it, and retrains.
//
//   example_trainer --target 127.0.0.1:50051 [--rounds 5] [--pool-size 4000]
//                   [--budget 20] [--strategy entropy] [--token T]
//                   [--tls-ca ca.pem [--tls-cert c.pem --tls-key k.pem]]
#include <cmath>
#include <cstdio>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "../tests/common.h"

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

  constexpr int d = 16, c = 4;
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
  std::vector<std::int64_t> labeled;  // seed set: one item per class
  for (int k = 0; k < c; ++k) labeled.push_back(k);

  try {
    assay::Client client(target, options);
    std::vector<float> probs(static_cast<std::size_t>(n) * c);
    for (int round = 0; round < rounds; ++round) {
      // Train: class centroids of the labeled items.
      std::vector<std::vector<double>> mean(c, std::vector<double>(d, 0.0));
      std::vector<int> count(c, 0);
      for (auto i : labeled) {
        ++count[truth[i]];
        for (int j = 0; j < d; ++j) mean[truth[i]][j] += emb[i * d + j];
      }
      // Predict: softmax of negative squared distances; measure accuracy.
      int correct = 0;
      for (int i = 0; i < n; ++i) {
        double logits[c], top = -1e300;
        for (int k = 0; k < c; ++k) {
          double dist = 0;
          for (int j = 0; j < d; ++j) {
            const double diff = emb[i * d + j] - (count[k] ? mean[k][j] / count[k] : 0.0);
            dist += diff * diff;
          }
          logits[k] = count[k] ? -0.5 * dist / d * 4.0 : -1e300;
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
      // Upload this round's pool, mark the labeled items, select the next batch.
      const std::string pool = "example-trainer-round-" + std::to_string(round);
      try {
        client.delete_pool(pool);
      } catch (const assay::Error& e) {
        if (e.code() != grpc::StatusCode::NOT_FOUND) throw;
      }
      client.create_pool(pool);
      client.append(pool, {{"embeddings", assay::TensorView::f32(emb, {n, d})},
                           {"probs", assay::TensorView::f32(probs, {n, c})}},
                    64 << 10);
      std::vector<std::int64_t> labels;
      for (auto i : labeled) labels.push_back(truth[i]);
      client.label(pool, labeled, labels);
      assay::SelectOptions s{.strategy = strategy, .budget = budget};
      s.pool_id = pool;
      s.seed = 1234;
      assay::Selection sel = client.select(s);
      labeled.insert(labeled.end(), sel.indices.begin(), sel.indices.end());
      std::printf("round %d: accuracy %.3f with %zu labels; selected %zu (best %lld, score %.4f)\n",
                  round, static_cast<double>(correct) / n, labeled.size() - sel.indices.size(),
                  sel.indices.size(), static_cast<long long>(sel.indices.at(0)),
                  sel.scores.empty() ? 0.0 : sel.scores[0]);
      client.delete_pool(pool);
    }
  } catch (const assay::Error& e) {
    std::cerr << "assay call failed: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
