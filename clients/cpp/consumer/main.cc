// One Select over inline probabilities, through the installed package (assay::client).
#include <cstdlib>
#include <iostream>
#include <vector>

#include <assay/client.h>

int main() {
  const char* env = std::getenv("ASSAY_TARGET");
  const char* token = std::getenv("ASSAY_TOKEN");
  assay::ClientOptions options;
  if (token != nullptr) options.token = token;
  assay::Client client(env != nullptr ? env : "127.0.0.1:50051", options);
  // Four items, three classes, row-major [N, C]: the two most uncertain are items 1 and 2.
  const std::vector<float> probs = {0.98f, 0.01f, 0.01f, 0.34f, 0.33f, 0.33f,
                                    0.60f, 0.30f, 0.10f, 0.50f, 0.50f, 0.00f};
  assay::SelectOptions select{.strategy = "entropy", .budget = 2};
  select.inputs.emplace("probs", assay::TensorView::f32(probs, {4, 3}));
  try {
    const assay::Selection selection = client.select(select);
    std::cout << "consumer: selected [";
    for (std::size_t i = 0; i < selection.indices.size(); ++i) {
      std::cout << (i ? " " : "") << selection.indices[i];
    }
    std::cout << "]\n";
  } catch (const assay::Error& e) {
    std::cerr << e.code_name() << " " << e.reason() << " " << e.field() << ": " << e.what()
              << "\n";
    return 1;
  }
  return 0;
}
