// Client: channel setup, deadlines, retries, and translation to and from assay.v1.
#include <cmath>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "assay/client.h"
#include "assay/v1/assay.grpc.pb.h"
#include "assay/v1/model.grpc.pb.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "sha256.h"

namespace assay {

namespace {

const char* const kStatusNames[] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED"};

// Prefix of the arrays that feed the graph inputs of a model with several.
constexpr std::string_view kNamedModelInputs = "model_inputs.";

// ErrorInfo.domain of Assay's own errors; ErrorInfo of other domains is ignored.
constexpr const char* kErrorDomain = "assay.v1";

Error to_error(const grpc::Status& status) { return Error::from_status(status); }

v1::ParamValue to_proto(const Param& p) {
  v1::ParamValue out;
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, double>) out.set_double_value(v);
        else if constexpr (std::is_same_v<T, std::int64_t>) out.set_int_value(v);
        else if constexpr (std::is_same_v<T, std::string>) out.set_string_value(v);
        else out.set_bool_value(v);
      },
      p.value);
  return out;
}

std::optional<Param> from_proto(const v1::ParamValue& p) {
  switch (p.kind_case()) {
    case v1::ParamValue::kDoubleValue: return Param(p.double_value());
    case v1::ParamValue::kIntValue: return Param(p.int_value());
    case v1::ParamValue::kStringValue: return Param(p.string_value());
    case v1::ParamValue::kBoolValue: return Param(p.bool_value());
    default: return std::nullopt;
  }
}

Pool from_proto(const v1::Pool& p) {
  Pool out{p.pool_id(), p.item_count(), p.labeled_count(), p.version(), {}, p.size_bytes()};
  for (const auto& a : p.arrays()) {
    out.arrays.push_back({a.name(), static_cast<DType>(a.dtype()),
                          {a.shape().begin(), a.shape().end()}});
  }
  return out;
}

ModelInput from_proto(const v1::ModelInput& i) {
  return {i.name(), static_cast<DType>(i.dtype()), {i.shape().begin(), i.shape().end()},
          i.array()};
}

Model from_proto(const v1::Model& m) {
  Model out{m.model_id(), {}, {}, m.size_bytes(), m.sha256(), m.opset_version(),
            m.dropout_count()};
  for (const auto& b : m.outputs()) out.outputs[b.role()] = b.output_name();
  for (const auto& i : m.inputs()) out.inputs.push_back(from_proto(i));
  // A server from before models had several inputs sends only the first.
  if (out.inputs.empty() && m.has_input()) out.inputs.push_back(from_proto(m.input()));
  return out;
}

v1::Tensor* input_field(v1::Inputs* in, const std::string& role) {
  if (role.starts_with(kNamedModelInputs)) {
    return &(*in->mutable_named_model_inputs())[role.substr(kNamedModelInputs.size())];
  }
  if (role == "probs") return in->mutable_probs();
  if (role == "samples") return in->mutable_samples();
  if (role == "embeddings") return in->mutable_embeddings();
  if (role == "labeled_embeddings") return in->mutable_labeled_embeddings();
  if (role == "scores") return in->mutable_scores();
  if (role == "loss") return in->mutable_loss();
  if (role == "discriminator") return in->mutable_discriminator();
  if (role == "predictions") return in->mutable_predictions();
  if (role == "labeled_probs") return in->mutable_labeled_probs();
  if (role == "labels") return in->mutable_labels();
  if (role == "model_inputs") return in->mutable_model_inputs();
  if (role == "target_samples") return in->mutable_target_samples();
  throw std::invalid_argument("unknown input role '" + role +
                              "' (probs, samples, embeddings, labeled_embeddings, scores, "
                              "loss, discriminator, predictions, labeled_probs, labels, "
                              "model_inputs, target_samples, model_inputs.<name>)");
}

}  // namespace

const char* status_code_name(grpc::StatusCode code) {
  const int i = static_cast<int>(code);
  return (i >= 0 && i <= 16) ? kStatusNames[i] : "UNKNOWN";
}

Error::Error(grpc::StatusCode code, std::string message, std::string reason, std::string field,
             std::optional<std::chrono::milliseconds> retry_delay)
    : std::runtime_error(std::string(status_code_name(code)) + (reason.empty() ? "" : " ") +
                         reason + ": " + message),
      code_(code),
      message_(std::move(message)),
      reason_(std::move(reason)),
      field_(std::move(field)),
      retry_delay_(retry_delay) {}

Error Error::from_status(const grpc::Status& status) {
  std::string reason, field;
  std::optional<std::chrono::milliseconds> retry_delay;
  google::rpc::Status rich;
  // The grpc-status-details-bin trailer; a status without it (or unreadable) keeps its code.
  if (!status.error_details().empty() && rich.ParseFromString(status.error_details())) {
    for (const auto& detail : rich.details()) {
      google::rpc::ErrorInfo info;
      google::rpc::RetryInfo retry;
      if (detail.UnpackTo(&info)) {
        if (info.domain() == kErrorDomain) {
          reason = info.reason();
          auto it = info.metadata().find("field");
          if (it != info.metadata().end()) field = it->second;
        }
      } else if (detail.UnpackTo(&retry) && retry.has_retry_delay()) {
        const auto& d = retry.retry_delay();
        retry_delay = std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::seconds(d.seconds()) + std::chrono::nanoseconds(d.nanos()));
      }
    }
  }
  return Error(status.error_code(), status.error_message(), std::move(reason), std::move(field),
               retry_delay);
}

const char* Error::code_name() const { return status_code_name(code_); }

std::string new_request_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uint64_t hi = rng(), lo = rng();
  hi = (hi & 0xffffffffffff0fffULL) | 0x0000000000004000ULL;  // version 4
  lo = (lo & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;  // variant 10
  char buf[37];
  std::snprintf(buf, sizeof buf, "%08x-%04x-%04x-%04x-%012llx",
                static_cast<unsigned>(hi >> 32), static_cast<unsigned>((hi >> 16) & 0xffff),
                static_cast<unsigned>(hi & 0xffff), static_cast<unsigned>(lo >> 48),
                static_cast<unsigned long long>(lo & 0xffffffffffffULL));
  return buf;
}

namespace {
// protos/assay/v1/service_config.json, copied by protos/gen_service_config.py.
constexpr const char* kServiceConfig =
#include "service_config.inc"
    ;
}  // namespace

std::string service_config(std::optional<int> retries) {
  if (!retries) return kServiceConfig;
  google::protobuf::Struct config;
  if (!google::protobuf::util::JsonStringToMessage(kServiceConfig, &config).ok()) {
    throw std::logic_error("the compiled-in service config is not JSON");
  }
  auto& methods = *(*config.mutable_fields())["methodConfig"].mutable_list_value()->mutable_values();
  for (auto& method : methods) {
    auto& fields = *method.mutable_struct_value()->mutable_fields();
    auto policy = fields.find("retryPolicy");
    if (policy == fields.end()) continue;
    (*policy->second.mutable_struct_value()->mutable_fields())["maxAttempts"].set_number_value(
        *retries + 1);
  }
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(config, &out).ok()) {
    throw std::logic_error("the service config does not serialize");
  }
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

struct Client::Impl {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::AssayService::Stub> stub;
  std::unique_ptr<v1::ModelService::Stub> models;

  void prepare(grpc::ClientContext* ctx, const ClientOptions& o,
               std::optional<std::chrono::milliseconds> timeout = std::nullopt) const {
    ctx->set_deadline(std::chrono::system_clock::now() + timeout.value_or(o.timeout));
    if (!o.token.empty()) ctx->AddMetadata("authorization", "Bearer " + o.token);
  }
};

Client::Client(const std::string& target, ClientOptions options)
    : options_(std::move(options)), impl_(std::make_unique<Impl>()) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(options_.max_message_bytes);
  args.SetMaxReceiveMessageSize(options_.max_message_bytes);
  // Retries are gRPC's own (gRFC A6), by the contract's service config: the call's one
  // deadline covers every attempt, and a pushback from the server replaces the backoff.
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, options_.retries == 0 ? 0 : 1);
  args.SetServiceConfigJSON(service_config(
      options_.retries.value_or(0) > 0 ? options_.retries : std::nullopt));
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (options_.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options_.root_certs_pem;
    ssl.pem_cert_chain = options_.client_cert_pem;
    ssl.pem_private_key = options_.client_key_pem;
    creds = grpc::SslCredentials(ssl);
    if (!options_.server_name_override.empty()) {
      args.SetSslTargetNameOverride(options_.server_name_override);
    }
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  impl_->channel = grpc::CreateCustomChannel(target, creds, args);
  impl_->stub = v1::AssayService::NewStub(impl_->channel);
  impl_->models = v1::ModelService::NewStub(impl_->channel);
}

Client::~Client() = default;

std::vector<StrategyInfo> Client::list_strategies() {
  grpc::ClientContext ctx;
  impl_->prepare(&ctx, options_);
  v1::ListStrategiesResponse resp;
  auto status = impl_->stub->ListStrategies(&ctx, v1::ListStrategiesRequest(), &resp);
  if (!status.ok()) throw to_error(status);
  std::vector<StrategyInfo> out;
  for (const auto& s : resp.strategies()) {
    StrategyInfo info{s.name(), s.kind(), s.description(),
                      {s.required_inputs().begin(), s.required_inputs().end()},
                      {s.optional_inputs().begin(), s.optional_inputs().end()}, {}};
    for (const auto& p : s.params()) {
      ParamInfo pi{p.name(), v1::ParamType_Name(p.type()), from_proto(p.default_value()),
                   std::nullopt, std::nullopt, {p.choices().begin(), p.choices().end()},
                   p.description()};
      if (p.has_minimum()) pi.minimum = p.minimum();
      if (p.has_maximum()) pi.maximum = p.maximum();
      info.params.push_back(std::move(pi));
    }
    out.push_back(std::move(info));
  }
  return out;
}

Selection Client::select(const SelectOptions& r) {
  v1::SelectRequest req;
  req.set_strategy(r.strategy);
  req.set_budget(r.budget);
  req.set_request_id(r.request_id.empty() ? new_request_id() : r.request_id);
  if (r.seed) req.set_seed(*r.seed);
  for (const auto& [name, value] : r.params) (*req.mutable_params())[name] = to_proto(value);
  for (auto i : r.exclude) req.add_exclude_indices(i);
  for (const auto& id : r.model_ids) req.add_model_ids(id);
  req.set_mc_samples(r.mc_samples);
  req.set_batch_size(r.batch_size);
  if (!r.pool_id.empty()) {
    req.set_pool_id(r.pool_id);
  } else {
    auto* inputs = req.mutable_inputs();
    for (const auto& [role, view] : r.inputs) view.to_proto(input_field(inputs, role));
  }
  // gRPC retries it on UNAVAILABLE, by the service config, with the same request id,
  // within the call's one deadline.
  v1::SelectResponse resp;
  grpc::ClientContext ctx;
  impl_->prepare(&ctx, options_, r.timeout);
  auto status = impl_->stub->Select(&ctx, req, &resp);
  if (!status.ok()) throw to_error(status);
  Selection out;
  out.indices.assign(resp.indices().begin(), resp.indices().end());
  out.scores.assign(resp.scores().begin(), resp.scores().end());
  out.strategy = resp.strategy();
  out.backend = resp.backend();
  out.seed = resp.seed();
  out.pool_version = resp.pool_version();
  out.request_id = resp.request_id();
  out.metrics.insert(resp.metrics().begin(), resp.metrics().end());
  out.pseudo_label_indices.assign(resp.pseudo_label_indices().begin(),
                                  resp.pseudo_label_indices().end());
  out.pseudo_labels.assign(resp.pseudo_labels().begin(), resp.pseudo_labels().end());
  out.compute_seconds = resp.compute_seconds();
  out.execution_providers.assign(resp.execution_providers().begin(),
                                 resp.execution_providers().end());
  return out;
}

Pool Client::create_pool(const std::string& pool_id) {
  grpc::ClientContext ctx;
  impl_->prepare(&ctx, options_);
  v1::CreatePoolRequest req;
  req.set_pool_id(pool_id);
  v1::CreatePoolResponse resp;
  auto status = impl_->stub->CreatePool(&ctx, req, &resp);
  if (!status.ok()) throw to_error(status);
  return from_proto(resp.pool());
}

Pool Client::get_pool(const std::string& pool_id) {
  grpc::ClientContext ctx;
  impl_->prepare(&ctx, options_);
  v1::GetPoolRequest req;
  req.set_pool_id(pool_id);
  v1::GetPoolResponse resp;
  auto status = impl_->stub->GetPool(&ctx, req, &resp);
  if (!status.ok()) throw to_error(status);
  return from_proto(resp.pool());
}

std::vector<Pool> Client::list_pools(int page_size) {
  std::vector<Pool> out;
  std::string token;
  do {
    grpc::ClientContext ctx;
    impl_->prepare(&ctx, options_);
    v1::ListPoolsRequest req;
    req.set_page_size(page_size);
    req.set_page_token(token);
    v1::ListPoolsResponse resp;
    auto status = impl_->stub->ListPools(&ctx, req, &resp);
    if (!status.ok()) throw to_error(status);
    for (const auto& p : resp.pools()) out.push_back(from_proto(p));
    token = resp.next_page_token();
  } while (!token.empty());
  return out;
}

void Client::delete_pool(const std::string& pool_id) {
  grpc::ClientContext ctx;
  impl_->prepare(&ctx, options_);
  v1::DeletePoolRequest req;
  req.set_pool_id(pool_id);
  v1::DeletePoolResponse resp;
  auto status = impl_->stub->DeletePool(&ctx, req, &resp);
  if (!status.ok()) throw to_error(status);
}

namespace {

// Streams a header, then the chunks of every array, to an append or a replace (their
// request messages have the same fields) and returns the call's status.
template <class Request, class Response, class Open>
grpc::Status upload(Open open, const std::string& pool_id,
                    const std::vector<std::pair<std::string, TensorView>>& arrays,
                    std::size_t chunk_bytes, const std::string& request_id, Response* resp) {
  if (chunk_bytes < 8) throw std::invalid_argument("chunk_bytes must be at least 8");
  chunk_bytes -= chunk_bytes % 8;  // whole elements of every dtype per chunk
  auto writer = open(resp);
  Request msg;
  auto* header = msg.mutable_header();
  header->set_pool_id(pool_id);
  header->set_request_id(request_id.empty() ? new_request_id() : request_id);
  for (const auto& [name, view] : arrays) {
    auto* a = header->add_arrays();
    a->set_name(name);
    a->set_dtype(static_cast<v1::DataType>(view.dtype()));
    for (auto d : view.shape()) a->add_shape(d);
  }
  bool ok = writer->Write(msg);
  for (std::size_t i = 0; ok && i < arrays.size(); ++i) {
    const TensorView& view = arrays[i].second;
    for (std::size_t off = 0; ok && off < view.size_bytes(); off += chunk_bytes) {
      Request chunk_msg;
      auto* chunk = chunk_msg.mutable_chunk();
      chunk->set_array_index(static_cast<std::int32_t>(i));
      chunk->set_offset(static_cast<std::int64_t>(off));
      view.append_le_bytes(off, std::min(chunk_bytes, view.size_bytes() - off),
                           chunk->mutable_data());
      ok = writer->Write(chunk_msg);
    }
  }
  if (ok) writer->WritesDone();
  return writer->Finish();
}

}  // namespace

AppendResult Client::append(const std::string& pool_id,
                            const std::vector<std::pair<std::string, TensorView>>& arrays,
                            std::size_t chunk_bytes, std::string request_id) {
  grpc::ClientContext ctx;
  impl_->prepare(&ctx, options_);
  v1::AppendPoolItemsResponse resp;
  auto status = upload<v1::AppendPoolItemsRequest>(
      [&](v1::AppendPoolItemsResponse* r) { return impl_->stub->AppendPoolItems(&ctx, r); },
      pool_id, arrays, chunk_bytes, request_id, &resp);
  if (!status.ok()) throw to_error(status);
  return {from_proto(resp.pool()), resp.first_index(), resp.appended_count()};
}

Pool Client::replace(const std::string& pool_id,
                     const std::vector<std::pair<std::string, TensorView>>& arrays,
                     std::size_t chunk_bytes, std::string request_id) {
  grpc::ClientContext ctx;
  impl_->prepare(&ctx, options_);
  v1::ReplacePoolArraysResponse resp;
  auto status = upload<v1::ReplacePoolArraysRequest>(
      [&](v1::ReplacePoolArraysResponse* r) { return impl_->stub->ReplacePoolArrays(&ctx, r); },
      pool_id, arrays, chunk_bytes, request_id, &resp);
  if (!status.ok()) throw to_error(status);
  return from_proto(resp.pool());
}

Pool Client::label(const std::string& pool_id, std::span<const std::int64_t> indices,
                   std::span<const std::int64_t> labels, std::string request_id) {
  grpc::ClientContext ctx;
  impl_->prepare(&ctx, options_);
  v1::LabelPoolItemsRequest req;
  req.set_pool_id(pool_id);
  req.mutable_indices()->Add(indices.begin(), indices.end());
  req.mutable_labels()->Add(labels.begin(), labels.end());
  req.set_request_id(request_id.empty() ? new_request_id() : request_id);
  v1::LabelPoolItemsResponse resp;
  auto status = impl_->stub->LabelPoolItems(&ctx, req, &resp);
  if (!status.ok()) throw to_error(status);
  return from_proto(resp.pool());
}

namespace {

v1::RegisterModelHeader model_header(const std::string& model_id, std::int64_t size,
                                     std::string sha256,
                                     const std::map<std::string, std::string>& outputs,
                                     const std::map<std::string, std::string>& inputs) {
  v1::RegisterModelHeader h;
  h.set_model_id(model_id);
  h.set_size_bytes(size);
  h.set_sha256(std::move(sha256));
  for (const auto& [role, name] : outputs) {
    auto* b = h.add_outputs();
    b->set_role(role);
    b->set_output_name(name);
  }
  for (const auto& [name, array] : inputs) {
    auto* b = h.add_inputs();
    b->set_input_name(name);
    b->set_array(array);
  }
  return h;
}

// Streams a RegisterModel call: the header, then the file's bytes in chunks, each from
// `read(offset, n, &out)` (false: the source failed, and the call is cancelled).
template <class Read>
Model upload_model(v1::ModelService::Stub* stub, grpc::ClientContext* ctx,
                   v1::RegisterModelHeader header, std::size_t chunk_bytes, Read read) {
  if (chunk_bytes == 0) throw std::invalid_argument("chunk_bytes must be positive");
  const auto size = static_cast<std::size_t>(header.size_bytes());
  v1::RegisterModelResponse resp;
  auto writer = stub->RegisterModel(ctx, &resp);
  v1::RegisterModelRequest msg;
  *msg.mutable_header() = std::move(header);
  bool ok = writer->Write(msg);
  bool source_failed = false;
  for (std::size_t off = 0; ok && off < size; off += chunk_bytes) {
    v1::RegisterModelRequest chunk;
    if (!read(off, std::min(chunk_bytes, size - off), chunk.mutable_chunk())) {
      source_failed = true;
      ctx->TryCancel();  // nothing is stored: the server never sees the whole file
      break;
    }
    ok = writer->Write(chunk);
  }
  if (ok && !source_failed) writer->WritesDone();
  auto status = writer->Finish();
  if (source_failed) throw std::runtime_error("the model file changed or became unreadable");
  if (!status.ok()) throw to_error(status);
  return from_proto(resp.model());
}

}  // namespace

Model Client::register_model(const std::string& model_id, std::string_view onnx,
                             const std::map<std::string, std::string>& outputs,
                             const std::map<std::string, std::string>& inputs,
                             std::size_t chunk_bytes,
                             std::optional<std::chrono::milliseconds> timeout) {
  grpc::ClientContext ctx;
  impl_->prepare(&ctx, options_, timeout);
  auto header = model_header(model_id, static_cast<std::int64_t>(onnx.size()),
                             sha256_hex(onnx), outputs, inputs);
  return upload_model(impl_->models.get(), &ctx, std::move(header), chunk_bytes,
                      [&](std::size_t off, std::size_t n, std::string* out) {
                        out->assign(onnx.substr(off, n));
                        return true;
                      });
}

Model Client::register_model_file(const std::string& model_id, const std::string& path,
                                  const std::map<std::string, std::string>& outputs,
                                  const std::map<std::string, std::string>& inputs,
                                  std::size_t chunk_bytes,
                                  std::optional<std::chrono::milliseconds> timeout) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  detail::Sha256 digest;
  std::int64_t size = 0;
  std::string buf(1 << 20, '\0');
  while (f.read(buf.data(), static_cast<std::streamsize>(buf.size())) || f.gcount() > 0) {
    digest.update(buf.data(), static_cast<std::size_t>(f.gcount()));
    size += f.gcount();
  }
  if (f.bad()) throw std::runtime_error("cannot read " + path);
  f.clear();
  f.seekg(0);
  grpc::ClientContext ctx;
  impl_->prepare(&ctx, options_, timeout);
  auto header = model_header(model_id, size, digest.hex_digest(), outputs, inputs);
  return upload_model(impl_->models.get(), &ctx, std::move(header), chunk_bytes,
                      [&](std::size_t, std::size_t n, std::string* out) {
                        out->resize(n);
                        f.read(out->data(), static_cast<std::streamsize>(n));
                        return static_cast<std::size_t>(f.gcount()) == n;
                      });
}

Model Client::get_model(const std::string& model_id) {
  grpc::ClientContext ctx;
  impl_->prepare(&ctx, options_);
  v1::GetModelRequest req;
  req.set_model_id(model_id);
  v1::GetModelResponse resp;
  auto status = impl_->models->GetModel(&ctx, req, &resp);
  if (!status.ok()) throw to_error(status);
  return from_proto(resp.model());
}

std::vector<Model> Client::list_models(int page_size) {
  std::vector<Model> out;
  std::string token;
  do {
    grpc::ClientContext ctx;
    impl_->prepare(&ctx, options_);
    v1::ListModelsRequest req;
    req.set_page_size(page_size);
    req.set_page_token(token);
    v1::ListModelsResponse resp;
    auto status = impl_->models->ListModels(&ctx, req, &resp);
    if (!status.ok()) throw to_error(status);
    for (const auto& m : resp.models()) out.push_back(from_proto(m));
    token = resp.next_page_token();
  } while (!token.empty());
  return out;
}

void Client::delete_model(const std::string& model_id) {
  grpc::ClientContext ctx;
  impl_->prepare(&ctx, options_);
  v1::DeleteModelRequest req;
  req.set_model_id(model_id);
  v1::DeleteModelResponse resp;
  auto status = impl_->models->DeleteModel(&ctx, req, &resp);
  if (!status.ok()) throw to_error(status);
}

}  // namespace assay
