// C++ client of Assay, the active-learning acquisition service (assay.v1).
//
//   assay::Client client("127.0.0.1:50051");
//   std::vector<float> probs = ...;                       // [N, C], row-major
//   assay::SelectOptions s{.strategy = "entropy", .budget = 10};
//   s.inputs.emplace("probs", assay::TensorView::f32(probs, {n, c}));
//   assay::Selection sel = client.select(s);              // sel.indices, best first
//
// A registered ONNX model runs on the server instead (see Client::register_model):
//
//   client.register_model_file("text", "model.onnx", {{"logits", "logits"}});
//   s.model_ids = {"text"};
//   s.inputs.emplace("model_inputs.input_ids", assay::TensorView::i64(ids, {n, len}));
//
// Every call has one deadline, which covers all its attempts: gRPC itself retries
// UNAVAILABLE for the methods that are safe to send twice, by the contract's service
// config (protos/assay/v1/service_config.json, compiled in; see service_config()), and
// the writes among them carry a request id. Every failure throws assay::Error carrying
// the gRPC status code and the server's reason, field and retry delay.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <grpcpp/grpcpp.h>

namespace assay {

namespace v1 {
class Tensor;
}

// Element type; values equal the wire enum assay.v1.DataType.
enum class DType : int { FP32 = 1, FP16 = 2, FP64 = 3, INT32 = 4, INT64 = 5, BF16 = 6 };

// Bytes per element of `t`.
std::size_t itemsize(DType t);
// KServe-style name: "FP32", "FP16", ...
const char* dtype_name(DType t);

// IEEE binary16 / bfloat16 bit patterns of a float, rounded to nearest even.
std::uint16_t float_to_half_bits(float v);
std::uint16_t float_to_bf16_bits(float v);
float half_bits_to_float(std::uint16_t h);

// A non-owning view of a contiguous row-major array. The bytes are copied once,
// into the request message, when a call serializes them (byte-swapped on
// big-endian hosts so the wire is always little-endian).
class TensorView {
 public:
  static TensorView f32(std::span<const float> v, std::vector<std::int64_t> shape);
  static TensorView f64(std::span<const double> v, std::vector<std::int64_t> shape);
  static TensorView i32(std::span<const std::int32_t> v, std::vector<std::int64_t> shape);
  static TensorView i64(std::span<const std::int64_t> v, std::vector<std::int64_t> shape);
  // 16-bit floats as their bit patterns (see float_to_half_bits / float_to_bf16_bits).
  static TensorView f16_bits(std::span<const std::uint16_t> v, std::vector<std::int64_t> shape);
  static TensorView bf16_bits(std::span<const std::uint16_t> v, std::vector<std::int64_t> shape);

  DType dtype() const { return dtype_; }
  const std::vector<std::int64_t>& shape() const { return shape_; }
  std::size_t size_bytes() const { return bytes_; }
  std::size_t elements() const { return bytes_ / itemsize(dtype_); }
  // Little-endian bytes [offset, offset + n) of the array, appended to `out`.
  void append_le_bytes(std::size_t offset, std::size_t n, std::string* out) const;
  // Fill a wire Tensor (dtype, shape, little-endian data).
  void to_proto(v1::Tensor* out) const;

 private:
  TensorView(DType dtype, const void* data, std::size_t count, std::vector<std::int64_t> shape);
  DType dtype_;
  const std::byte* data_;
  std::size_t bytes_;
  std::vector<std::int64_t> shape_;
};

// A failed call, with what a program needs to act on it: the gRPC status code, the
// server's message (for people), and from the status details (google.rpc.ErrorInfo and
// RetryInfo, see docs/errors.md) the stable reason to branch on ("DISK_FULL",
// "TOO_MANY_REQUESTS", ...; empty for a status that did not come from Assay, such as a
// transport error), the offending request field (empty: none) and the server's back-off
// hint for a refusal that the same request may retry (nullopt: none).
class Error : public std::runtime_error {
 public:
  Error(grpc::StatusCode code, std::string message, std::string reason = {},
        std::string field = {},
        std::optional<std::chrono::milliseconds> retry_delay = std::nullopt);
  // The error of a failed call's status, with its details decoded.
  static Error from_status(const grpc::Status& status);
  grpc::StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "INVALID_ARGUMENT", "NOT_FOUND", ...
  const char* code_name() const;
  // ErrorInfo.reason ("POOL_NOT_FOUND", ...), empty when the status carries none.
  const std::string& reason() const { return reason_; }
  // The offending request field ("inputs.probs", ...), empty when none is named.
  const std::string& field() const { return field_; }
  // RetryInfo.retry_delay: how long to wait before retrying the same request.
  std::optional<std::chrono::milliseconds> retry_delay() const { return retry_delay_; }

 private:
  grpc::StatusCode code_;
  std::string message_;
  std::string reason_;
  std::string field_;
  std::optional<std::chrono::milliseconds> retry_delay_;
};

// Name of a gRPC status code ("OK", "CANCELLED", ..., "UNAUTHENTICATED").
const char* status_code_name(grpc::StatusCode code);

// A typed strategy parameter.
struct Param {
  std::variant<double, std::int64_t, std::string, bool> value;
  Param(double v) : value(v) {}
  Param(int v) : value(static_cast<std::int64_t>(v)) {}
  Param(std::int64_t v) : value(v) {}
  Param(const char* v) : value(std::string(v)) {}
  Param(std::string v) : value(std::move(v)) {}
  Param(bool v) : value(v) {}
};

struct ClientOptions {
  // Default deadline of every call: one deadline covers all the attempts of a call.
  std::chrono::milliseconds timeout{60'000};
  // Extra attempts on UNAVAILABLE of the methods that are safe to send twice (nullopt:
  // the contract's service config, at most 3; 0 turns retries off). See service_config().
  std::optional<int> retries;
  // TLS: set `tls` and, for a private CA, its PEM; for mTLS also a client cert and key.
  bool tls = false;
  std::string root_certs_pem;
  std::string client_cert_pem;
  std::string client_key_pem;
  // Name to check the server certificate against, when it differs from the target host.
  std::string server_name_override;
  // Bearer token, sent as "authorization: Bearer <token>".
  std::string token;
  int max_message_bytes = 64 << 20;
};

struct SelectOptions {
  std::string strategy;
  std::int64_t budget = 0;
  // Inline arrays by role ("probs", "samples", "embeddings", "labeled_embeddings", "scores",
  // "loss", "discriminator", "predictions", "labeled_probs", "labels", "model_inputs",
  // and "model_inputs.<name>" for each graph input of a model with several, such as
  // "model_inputs.input_ids"), or a pool id.
  std::map<std::string, TensorView> inputs;
  std::string pool_id;
  // Registered models the server runs over the raw model_inputs (inline, or the pool's)
  // to produce the strategy's inputs; several form a committee.
  std::vector<std::string> model_ids;
  // MC dropout: S > 0 runs each model S times with its Dropout nodes sampling
  // (reproducible from the seed and batch_size); 0: dropout off.
  std::int32_t mc_samples = 0;
  // Items per inference batch; 0 lets the server choose.
  std::int32_t batch_size = 0;
  std::map<std::string, Param> params;
  std::optional<std::uint64_t> seed;
  // Idempotency key; a UUID is generated when empty.
  std::string request_id;
  std::vector<std::int64_t> exclude;
  // Overrides ClientOptions::timeout for this call.
  std::optional<std::chrono::milliseconds> timeout;
};

struct Selection {
  std::vector<std::int64_t> indices;  // best first
  std::vector<double> scores;         // per index; empty for joint batch strategies
  std::string strategy;
  std::string backend;
  std::uint64_t seed = 0;
  std::int64_t pool_version = 0;
  std::string request_id;
  std::map<std::string, double> metrics;
  std::vector<std::int64_t> pseudo_label_indices;
  std::vector<std::int64_t> pseudo_labels;
  double compute_seconds = 0;
  // Per entry of SelectOptions::model_ids, the onnxruntime execution provider that ran it
  // ("CUDAExecutionProvider", "CPUExecutionProvider"); empty when no model ran.
  std::vector<std::string> execution_providers;
};

struct ArrayInfo {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
};

struct Pool {
  std::string pool_id;
  std::int64_t item_count = 0;
  std::int64_t labeled_count = 0;
  std::int64_t version = 0;
  std::vector<ArrayInfo> arrays;
  std::int64_t size_bytes = 0;
};

struct AppendResult {
  Pool pool;
  std::int64_t first_index = 0;
  std::int64_t appended_count = 0;
};

// A graph input of a registered model and the pool array that feeds it.
struct ModelInput {
  std::string name;
  DType dtype;                      // the type the model expects
  std::vector<std::int64_t> shape;  // declared; -1 marks a dynamic axis, axis 0 the items
  std::string array;                // "model_inputs" or "model_inputs.<name>"
};

// A registered ONNX model.
struct Model {
  std::string model_id;
  std::map<std::string, std::string> outputs;  // role -> graph output name
  std::vector<ModelInput> inputs;              // every graph input, in the graph's order
  std::int64_t size_bytes = 0;
  std::string sha256;                          // lower-case hex digest of the file
  std::int64_t opset_version = 0;
  std::int32_t dropout_count = 0;              // MC dropout needs at least one
};

struct ParamInfo {
  std::string name;
  std::string type;  // "PARAM_TYPE_DOUBLE", ...
  std::optional<Param> default_value;
  std::optional<double> minimum, maximum;
  std::vector<std::string> choices;
  std::string description;
};

struct StrategyInfo {
  std::string name;
  std::string kind;  // "score" or "batch"
  std::string description;
  std::vector<std::string> required_inputs;
  std::vector<std::string> optional_inputs;
  std::vector<ParamInfo> params;
};

// A new random (version 4) UUID.
std::string new_request_id();
// The contract's gRPC service config (JSON), which every Assay client uses: retryPolicy
// on UNAVAILABLE for the methods that are safe to send twice. `retries` replaces its extra
// attempts (maxAttempts = retries + 1; gRPC caps attempts at 5); nullopt keeps the
// shipped policy.
std::string service_config(std::optional<int> retries = std::nullopt);
// Contents of a file (for PEM files); throws std::runtime_error.
std::string read_file(const std::string& path);
// Lower-case hex SHA-256 digest of `data` (what register_model declares for a file).
std::string sha256_hex(std::string_view data);

class Client {
 public:
  explicit Client(const std::string& target, ClientOptions options = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  std::vector<StrategyInfo> list_strategies();
  Selection select(const SelectOptions& request);

  Pool create_pool(const std::string& pool_id);
  Pool get_pool(const std::string& pool_id);
  std::vector<Pool> list_pools(int page_size = 100);
  void delete_pool(const std::string& pool_id);
  // Streams arrays (role -> view) into a pool in chunks of `chunk_bytes`.
  AppendResult append(const std::string& pool_id,
                      const std::vector<std::pair<std::string, TensorView>>& arrays,
                      std::size_t chunk_bytes = 4 << 20, std::string request_id = {});
  // Replaces the named arrays of a pool for all its N items (a round of the loop: the
  // retrained model's probs, samples or embeddings), streamed like append. Every array
  // must cover exactly the pool's N items; labels, raw model_inputs and recorded epochs
  // are kept. Nothing changes unless the whole stream arrives. Returns the pool at its
  // new version (Selection::pool_version of later selects).
  Pool replace(const std::string& pool_id,
               const std::vector<std::pair<std::string, TensorView>>& arrays,
               std::size_t chunk_bytes = 4 << 20, std::string request_id = {});
  Pool label(const std::string& pool_id, std::span<const std::int64_t> indices,
             std::span<const std::int64_t> labels, std::string request_id = {});

  // Uploads an ONNX model (its bytes) under `model_id`, streamed in chunks of `chunk_bytes`
  // with its size and SHA-256, which the server checks before storing anything.
  // `outputs` maps roles ("logits" or "probs", "embeddings", "loss", "discriminator") to
  // graph output names. `inputs` maps graph input names to the arrays that feed them
  // ("model_inputs" or "model_inputs.<name>"); empty: one graph input reads
  // "model_inputs", several read "model_inputs.<input name>" each. A `timeout` overrides
  // ClientOptions::timeout for a large upload.
  Model register_model(const std::string& model_id, std::string_view onnx,
                       const std::map<std::string, std::string>& outputs,
                       const std::map<std::string, std::string>& inputs = {},
                       std::size_t chunk_bytes = 4 << 20,
                       std::optional<std::chrono::milliseconds> timeout = std::nullopt);
  // The same from a file, read twice (digest, then upload) and never held whole in memory.
  Model register_model_file(const std::string& model_id, const std::string& path,
                            const std::map<std::string, std::string>& outputs,
                            const std::map<std::string, std::string>& inputs = {},
                            std::size_t chunk_bytes = 4 << 20,
                            std::optional<std::chrono::milliseconds> timeout = std::nullopt);
  Model get_model(const std::string& model_id);
  // Every registered model in id order, following pagination.
  std::vector<Model> list_models(int page_size = 100);
  void delete_model(const std::string& model_id);

  const ClientOptions& options() const { return options_; }

 private:
  struct Impl;
  ClientOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace assay
