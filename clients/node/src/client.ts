// Client of Assay over @grpc/grpc-js with ts-proto generated types.
import { createHash, randomUUID } from "node:crypto";
import { once } from "node:events";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import * as grpc from "@grpc/grpc-js";
import {
  AppendPoolItemsRequest,
  AssayServiceClient,
  CreatePoolRequest,
  DeletePoolRequest,
  GetPoolRequest,
  LabelPoolItemsRequest,
  ListPoolsRequest,
  ListStrategiesRequest,
  Inputs,
  ParamType,
  ParamValue,
  Pool as PoolMessage,
  SelectRequest,
  paramTypeToJSON,
} from "../gen/assay/v1/assay.js";
import {
  DeleteModelRequest,
  GetModelRequest,
  ListModelsRequest,
  Model as ModelMessage,
  ModelServiceClient,
  RegisterModelRequest,
} from "../gen/assay/v1/model.js";
import { DataType, dataTypeToJSON } from "../gen/assay/v1/tensor.js";
import { RichDetails, richDetails } from "./errors.js";
import { SERVICE_CONFIG_JSON } from "./service_config.js";
import { DTYPE_ENUM, DType, Tensor } from "./tensor.js";

export interface ClientOptions {
  /** Deadline of every call, in milliseconds (default 60 000): one deadline covers all its attempts. */
  timeoutMs?: number;
  /**
   * Extra attempts on UNAVAILABLE of the methods that are safe to send twice (default: the
   * contract's service config, at most 3; 0 turns retries off). See `serviceConfig`.
   */
  retries?: number;
  /** TLS: PEM bytes of a private CA; `cert` + `key` for mTLS. `{}` uses the system roots. */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer; serverName?: string };
  /** Bearer token, sent as "authorization: Bearer <token>". */
  token?: string;
  maxMessageBytes?: number;
}

const CODE_NAMES = Object.fromEntries(
  Object.entries(grpc.status).filter(([, v]) => typeof v === "number").map(([k, v]) => [v, k]),
) as Record<number, string>;

/**
 * A failed call, with what a program needs to act on it: the gRPC status code (`code`,
 * `codeName`), the server's message (`details`, for people), and from the status details
 * (google.rpc.ErrorInfo and RetryInfo, see docs/errors.md) the stable `reason` to branch on
 * ("DISK_FULL", "TOO_MANY_REQUESTS", ...; "" for a status that did not come from Assay, such
 * as a transport error), the offending request `field` ("": none) and `retryDelayMs`, the
 * server's back-off hint for a refusal that the same request may retry (undefined: none).
 */
export class AssayError extends Error {
  readonly code: grpc.status;
  readonly codeName: string;
  readonly details: string;
  readonly reason: string;
  readonly field: string;
  readonly retryDelayMs: number | undefined;
  constructor(code: grpc.status, details: string, rich: RichDetails = {}) {
    const name = CODE_NAMES[code] ?? String(code);
    super(`${name}${rich.reason ? ` ${rich.reason}` : ""}: ${details}`);
    this.name = "AssayError";
    this.code = code;
    this.codeName = name;
    this.details = details;
    this.reason = rich.reason ?? "";
    this.field = rich.field ?? "";
    this.retryDelayMs = rich.retryDelayMs;
  }
  static from(error: unknown): AssayError {
    const e = error as grpc.ServiceError;
    if (e && typeof e.code === "number") {
      return new AssayError(e.code, e.details ?? e.message, richDetails(e.metadata));
    }
    return new AssayError(grpc.status.UNKNOWN, String(error));
  }
}

export type Param = number | bigint | string | boolean | { double: number };
export type Role =
  | "probs" | "samples" | "embeddings" | "labeled_embeddings"
  | "scores" | "loss" | "discriminator" | "predictions"
  | "labeled_probs" | "labels" | "model_inputs" | "target_samples";

/** Prefix of the raw-input arrays of a model with several graph inputs. */
export const NAMED_MODEL_INPUTS = "model_inputs.";

/**
 * The name of an array in a pool or an inline Select: a role, or `model_inputs.<name>`, a raw
 * input of a model with several graph inputs (a transformer's `model_inputs.input_ids` and
 * `model_inputs.attention_mask`; <name> is 1-100 of [A-Za-z0-9_.-], not starting with . or -).
 */
export type ArrayName = Role | `model_inputs.${string}`;

/**
 * Named raw model inputs as arrays: `{ input_ids: ids, attention_mask: mask }` gives
 * `[["model_inputs.input_ids", ids], ["model_inputs.attention_mask", mask]]`, for `append`
 * (or, through `Object.fromEntries`, for `SelectOptions.inputs`).
 */
export function modelInputs(named: Record<string, Tensor>): [ArrayName, Tensor][] {
  return Object.entries(named).map(([name, t]) => [`${NAMED_MODEL_INPUTS}${name}`, t]);
}

/** Options of `append` and `replace`. */
export interface UploadOptions {
  /** Bytes per streamed chunk (default 4 MiB). */
  chunkBytes?: number;
  /** Idempotency key; a UUID when absent. */
  requestId?: string;
  timeoutMs?: number;
}

export interface SelectOptions {
  strategy: string;
  budget: number;
  /** Inline arrays by role (and `model_inputs.<name>`); or give `poolId`. */
  inputs?: Partial<Record<ArrayName, Tensor>>;
  poolId?: string;
  /** Integers (number or bigint) go as int_value; `{double: x}` forces a double. */
  params?: Record<string, Param>;
  seed?: bigint | number;
  requestId?: string;
  exclude?: ArrayLike<number | bigint>;
  timeoutMs?: number;
  /**
   * Registered model ids: the server runs them over the raw `model_inputs` (inline or the
   * pool's) and their declared outputs become the strategy's inputs; several form a committee.
   */
  models?: string[];
  /** MC dropout: S > 0 runs each model S times with its Dropout nodes sampling (0: off). */
  mcSamples?: number;
  /** Items per inference batch (0: the server picks one). */
  batchSize?: number;
}

export interface Selection {
  /** Selected indices, best first. */
  indices: BigInt64Array;
  scores: Float64Array;
  strategy: string;
  backend: string;
  seed: bigint;
  poolVersion: bigint;
  requestId: string;
  metrics: Record<string, number>;
  pseudoLabelIndices: BigInt64Array;
  pseudoLabels: BigInt64Array;
  computeSeconds: number;
  /** Per entry of `models`, the onnxruntime execution provider that ran it. */
  executionProviders: string[];
}

export interface Pool {
  poolId: string;
  itemCount: number;
  labeledCount: number;
  version: number;
  arrays: { name: string; dtype: string; shape: number[] }[];
  sizeBytes: number;
}

/** A graph input of a registered model and the array that feeds it. */
export interface ModelInput {
  name: string;
  /** "FP32", "INT64", ...: the element type the model expects. */
  dtype: string;
  /** Declared shape; -1 marks a dynamic axis. */
  shape: number[];
  /** `model_inputs` or `model_inputs.<name>`. */
  array: string;
}

/** A registered ONNX model. */
export interface Model {
  modelId: string;
  /** Role (logits or probs, embeddings, loss, discriminator) -> graph output name. */
  outputs: Record<string, string>;
  /** Every graph input, in the graph's order. */
  inputs: ModelInput[];
  sizeBytes: number;
  /** Lower-case hex SHA-256 of the ONNX file. */
  sha256: string;
  opsetVersion: number;
  /** Dropout nodes; MC dropout (`mcSamples`) needs at least one. */
  dropoutCount: number;
  createTime?: Date;
}

/** Options of `registerModel`. */
export interface RegisterModelOptions {
  /**
   * Graph input name -> the array that feeds it (`model_inputs` or `model_inputs.<name>`).
   * Absent: one graph input reads `model_inputs`, several read `model_inputs.<input name>`.
   */
  inputs?: Record<string, string>;
  /** Bytes per streamed chunk (default 4 MiB). */
  chunkBytes?: number;
  timeoutMs?: number;
}

export interface StrategyInfo {
  name: string;
  kind: string;
  description: string;
  requiredInputs: string[];
  optionalInputs: string[];
  params: {
    name: string; type: string; default: unknown; minimum?: number; maximum?: number;
    choices: string[]; description: string;
  }[];
}

const INPUT_FIELDS: Record<Role, keyof Inputs> = {
  probs: "probs", samples: "samples", embeddings: "embeddings",
  labeled_embeddings: "labeledEmbeddings", scores: "scores", loss: "loss",
  discriminator: "discriminator", predictions: "predictions",
  labeled_probs: "labeledProbs", labels: "labels", model_inputs: "modelInputs",
  target_samples: "targetSamples",
};

function toWire(t: Tensor) {
  return { dtype: DTYPE_ENUM[t.dtype], shape: t.shape.map(BigInt), data: t.data };
}

function paramValue(v: Param): ParamValue {
  if (typeof v === "boolean") return { boolValue: v };
  if (typeof v === "bigint") return { intValue: v };
  if (typeof v === "string") return { stringValue: v };
  if (typeof v === "number") return Number.isInteger(v) ? { intValue: BigInt(v) } : { doubleValue: v };
  return { doubleValue: v.double };
}

function unparam(p: ParamValue | undefined): unknown {
  if (!p) return undefined;
  return p.doubleValue ?? p.intValue ?? p.stringValue ?? p.boolValue;
}

function pool(p: PoolMessage | undefined): Pool {
  if (!p) throw new AssayError(grpc.status.INTERNAL, "response without a pool");
  return {
    poolId: p.poolId, itemCount: Number(p.itemCount), labeledCount: Number(p.labeledCount),
    version: Number(p.version), sizeBytes: Number(p.sizeBytes),
    arrays: p.arrays.map((a) => ({
      name: a.name, dtype: dtypeName(a.dtype),
      shape: a.shape.map(Number),
    })),
  };
}

function dtypeName(d: DataType): string {
  return dataTypeToJSON(d).replace("DATA_TYPE_", "");
}

function model(m: ModelMessage | undefined): Model {
  if (!m) throw new AssayError(grpc.status.INTERNAL, "response without a model");
  return {
    modelId: m.modelId,
    outputs: Object.fromEntries(m.outputs.map((o) => [o.role, o.outputName])),
    inputs: m.inputs.map((i) => ({
      name: i.name, dtype: dtypeName(i.dtype), shape: i.shape.map(Number), array: i.array,
    })),
    sizeBytes: Number(m.sizeBytes), sha256: m.sha256, opsetVersion: Number(m.opsetVersion),
    dropoutCount: m.dropoutCount, createTime: m.createTime,
  };
}

/** The bytes of a model, in chunks: from memory, or read from a file twice (digest, upload). */
interface ModelSource {
  size: number;
  chunks(chunkBytes: number): AsyncIterable<Uint8Array>;
}

function bytesSource(data: Uint8Array): ModelSource {
  return {
    size: data.byteLength,
    async *chunks(chunkBytes) {
      for (let off = 0; off < data.byteLength; off += chunkBytes) yield data.subarray(off, off + chunkBytes);
    },
  };
}

async function fileSource(path: string): Promise<ModelSource> {
  return {
    size: (await stat(path)).size,
    chunks: (chunkBytes) => createReadStream(path, { highWaterMark: chunkBytes }),
  };
}

/**
 * The contract's gRPC service config (JSON; protos/assay/v1/service_config.json, copied into
 * src/service_config.ts), which every Assay client uses: retryPolicy on UNAVAILABLE for the
 * methods that are safe to send twice. `retries` replaces its extra attempts (maxAttempts =
 * retries + 1; gRPC caps attempts at 5); undefined keeps the shipped policy.
 */
export function serviceConfig(retries?: number): string {
  if (retries === undefined) return SERVICE_CONFIG_JSON;
  const config = JSON.parse(SERVICE_CONFIG_JSON);
  for (const method of config.methodConfig) {
    if (method.retryPolicy) method.retryPolicy.maxAttempts = retries + 1;
  }
  return JSON.stringify(config);
}

export class Client {
  private readonly stub: AssayServiceClient;
  private readonly models: ModelServiceClient;
  private readonly timeoutMs: number;
  private readonly token?: string;

  constructor(target: string, options: ClientOptions = {}) {
    const max = options.maxMessageBytes ?? 64 << 20;
    const channelOptions: Record<string, string | number> = {
      "grpc.max_send_message_length": max,
      "grpc.max_receive_message_length": max,
      // Retries are gRPC's own (gRFC A6), by the contract's service config: the call's one
      // deadline covers every attempt, and a pushback from the server replaces the backoff.
      "grpc.enable_retries": options.retries === 0 ? 0 : 1,
      "grpc.service_config": serviceConfig(options.retries || undefined),
    };
    let creds = grpc.credentials.createInsecure();
    if (options.tls) {
      const { ca, cert, key, serverName } = options.tls;
      creds = grpc.credentials.createSsl(ca ?? null, key ?? null, cert ?? null);
      if (serverName) channelOptions["grpc.ssl_target_name_override"] = serverName;
    }
    this.stub = new AssayServiceClient(target, creds, channelOptions);
    // One channel for both services.
    this.models = new ModelServiceClient(target, creds,
                                         { ...channelOptions, channelOverride: this.stub.getChannel() });
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.token = options.token;
  }

  close(): void {
    this.stub.close();
  }

  private call(timeoutMs?: number): [grpc.Metadata, Partial<grpc.CallOptions>] {
    const md = new grpc.Metadata();
    if (this.token) md.set("authorization", `Bearer ${this.token}`);
    return [md, { deadline: Date.now() + (timeoutMs ?? this.timeoutMs) }];
  }

  private unary<Req, Res>(method: string, request: Req, timeoutMs?: number,
                          stub: grpc.Client = this.stub): Promise<Res> {
    const [md, opts] = this.call(timeoutMs);
    return new Promise((resolve, reject) => {
      (stub as any)[method](request, md, opts, (err: grpc.ServiceError | null, res: Res) =>
        err ? reject(AssayError.from(err)) : resolve(res));
    });
  }

  /** Every strategy the server offers, with inputs and parameter declarations. */
  async listStrategies(): Promise<StrategyInfo[]> {
    const r: any = await this.unary("listStrategies", ListStrategiesRequest.fromPartial({}));
    return r.strategies.map((s: any) => ({
      name: s.name, kind: s.kind, description: s.description,
      requiredInputs: s.requiredInputs, optionalInputs: s.optionalInputs,
      params: s.params.map((p: any) => ({
        name: p.name, type: paramTypeToJSON(p.type as ParamType), default: unparam(p.defaultValue),
        minimum: p.minimum, maximum: p.maximum, choices: p.choices, description: p.description,
      })),
    }));
  }

  /** Build the wire request of a Select (the load generator reuses it). */
  static selectRequest(o: SelectOptions): SelectRequest {
    // fromPartial fills every field the contract may add later with its default.
    const req: SelectRequest = SelectRequest.fromPartial({
      strategy: o.strategy, budget: BigInt(o.budget), params: {},
      requestId: o.requestId ?? randomUUID(),
      excludeIndices: Array.from(o.exclude ?? [], (i) => BigInt(i)),
    });
    if (o.seed !== undefined) req.seed = BigInt(o.seed);
    req.modelIds = [...(o.models ?? [])];
    req.mcSamples = o.mcSamples ?? 0;
    req.batchSize = o.batchSize ?? 0;
    for (const [k, v] of Object.entries(o.params ?? {})) req.params[k] = paramValue(v);
    if (o.poolId !== undefined) {
      // A request holds a pool id or inline arrays, never both: the arrays would be dropped
      // without a word and the pool's used instead.
      const given = Object.keys(o.inputs ?? {});
      if (given.length) {
        throw new RangeError(`select got poolId "${o.poolId}" and inline inputs [${given}]; ` +
          "choose one: append the arrays to the pool, or leave out poolId to send them inline");
      }
      req.poolId = o.poolId;
    } else {
      const inputs: Inputs = Inputs.fromPartial({});
      for (const [name, t] of Object.entries(o.inputs ?? {})) {
        if (name.startsWith(NAMED_MODEL_INPUTS)) {
          // The server checks the name's alphabet, as it does for a pool's arrays.
          inputs.namedModelInputs[name.slice(NAMED_MODEL_INPUTS.length)] = toWire(t as Tensor);
          continue;
        }
        const field = INPUT_FIELDS[name as Role];
        if (!field) throw new RangeError(`unknown input role ${name}`);
        (inputs as any)[field] = toWire(t as Tensor);
      }
      req.inputs = inputs;
    }
    return req;
  }

  /**
   * Select items. gRPC retries it on UNAVAILABLE, by the service config, with the same
   * request id, within the call's one deadline.
   */
  async select(o: SelectOptions): Promise<Selection> {
    const req = Client.selectRequest(o);
    const r: any = await this.unary("select", req, o.timeoutMs);
    return {
      indices: BigInt64Array.from(r.indices as bigint[]),
      scores: Float64Array.from(r.scores as number[]),
      strategy: r.strategy, backend: r.backend, seed: r.seed, poolVersion: r.poolVersion,
      requestId: r.requestId, metrics: r.metrics,
      pseudoLabelIndices: BigInt64Array.from(r.pseudoLabelIndices as bigint[]),
      pseudoLabels: BigInt64Array.from(r.pseudoLabels as bigint[]),
      computeSeconds: r.computeSeconds, executionProviders: [...r.executionProviders],
    };
  }

  /**
   * Upload an ONNX model (its bytes, or a file path) under `modelId`. `outputs` maps roles
   * (logits or probs, embeddings, loss, discriminator) to the graph's output names;
   * `opts.inputs` binds graph inputs to arrays. The file is streamed in chunks with its
   * SHA-256, which the server verifies before storing anything.
   */
  async registerModel(modelId: string, source: Uint8Array | string, outputs: Record<string, string>,
                      opts: RegisterModelOptions = {}): Promise<Model> {
    const chunkBytes = opts.chunkBytes ?? 4 << 20;
    if (!(chunkBytes > 0)) throw new RangeError(`chunkBytes must be positive, not ${chunkBytes}`);
    const src = typeof source === "string" ? await fileSource(source) : bytesSource(source);
    const hash = createHash("sha256");
    for await (const chunk of src.chunks(chunkBytes)) hash.update(chunk);
    const header = {
      modelId, sizeBytes: BigInt(src.size), sha256: hash.digest("hex"),
      outputs: Object.entries(outputs).map(([role, outputName]) => ({ role, outputName })),
      inputs: Object.entries(opts.inputs ?? {}).map(([inputName, array]) => ({ inputName, array })),
    };
    const r = await this.clientStream<RegisterModelRequest>(
      (md, callOpts, cb) => this.models.registerModel(md, callOpts, cb), opts.timeoutMs,
      async (write) => {
        await write(RegisterModelRequest.fromPartial({ header }));
        for await (const chunk of src.chunks(chunkBytes)) await write({ chunk });
      });
    return model(r.model);
  }

  async getModel(modelId: string): Promise<Model> {
    const r: any = await this.unary("getModel", GetModelRequest.fromPartial({ modelId }), undefined,
                                    this.models);
    return model(r.model);
  }

  /** Every registered model, in id order, following pagination. */
  async listModels(pageSize = 100): Promise<Model[]> {
    const out: Model[] = [];
    let pageToken = "";
    do {
      const r: any = await this.unary("listModels", ListModelsRequest.fromPartial({ pageSize, pageToken }),
                                      undefined, this.models);
      out.push(...r.models.map(model));
      pageToken = r.nextPageToken;
    } while (pageToken);
    return out;
  }

  async deleteModel(modelId: string): Promise<void> {
    await this.unary("deleteModel", DeleteModelRequest.fromPartial({ modelId }), undefined, this.models);
  }

  async createPool(poolId: string): Promise<Pool> {
    return pool((await this.unary<any, any>("createPool", CreatePoolRequest.fromPartial({ poolId }))).pool);
  }

  async getPool(poolId: string): Promise<Pool> {
    return pool((await this.unary<any, any>("getPool", GetPoolRequest.fromPartial({ poolId }))).pool);
  }

  /** Every pool, following pagination. */
  async listPools(pageSize = 100): Promise<Pool[]> {
    const out: Pool[] = [];
    let pageToken = "";
    do {
      const r: any = await this.unary("listPools", ListPoolsRequest.fromPartial({ pageSize, pageToken }));
      out.push(...r.pools.map(pool));
      pageToken = r.nextPageToken;
    } while (pageToken);
    return out;
  }

  async deletePool(poolId: string): Promise<void> {
    await this.unary("deletePool", DeletePoolRequest.fromPartial({ poolId }));
  }

  async label(poolId: string, indices: ArrayLike<number | bigint>,
              labels: ArrayLike<number | bigint>, requestId?: string): Promise<Pool> {
    const r: any = await this.unary("labelPoolItems", LabelPoolItemsRequest.fromPartial({
      poolId, indices: Array.from(indices, (i) => BigInt(i)),
      labels: Array.from(labels, (i) => BigInt(i)), requestId: requestId ?? randomUUID(),
    }));
    return pool(r.pool);
  }

  /** Stream arrays into a pool in chunks (4 MiB by default); all or nothing. */
  async append(poolId: string, arrays: [ArrayName, Tensor][], opts: UploadOptions = {},
  ): Promise<{ pool: Pool; firstIndex: number; appendedCount: number }> {
    const r = await this.upload("appendPoolItems", poolId, arrays, opts);
    return { pool: pool(r.pool), firstIndex: Number(r.firstIndex), appendedCount: Number(r.appendedCount) };
  }

  /**
   * Replace arrays of a pool for all its N items: a round of the active-learning loop,
   * where the retrained model's probs, samples or embeddings take the place of the last
   * round's. Every array must cover exactly the pool's N items; labels, raw model_inputs
   * and recorded epochs are kept. Streamed in chunks like `append`; nothing changes
   * unless the whole stream arrives. Resolves to the pool at its new version
   * (`Selection.poolVersion` of later selects).
   */
  async replace(poolId: string, arrays: [ArrayName, Tensor][], opts: UploadOptions = {}): Promise<Pool> {
    return pool((await this.upload("replacePoolArrays", poolId, arrays, opts)).pool);
  }

  /** Stream a header, then every array in chunks, to an append or a replace. */
  private async upload(method: "appendPoolItems" | "replacePoolArrays", poolId: string,
                       arrays: [ArrayName, Tensor][], opts: UploadOptions): Promise<any> {
    const chunkBytes = opts.chunkBytes ?? 4 << 20;
    // Both streams take messages of the same shape (AppendPoolItemsRequest's fields).
    return this.clientStream<AppendPoolItemsRequest>(
      (md, callOpts, cb) => (this.stub as any)[method](md, callOpts, cb), opts.timeoutMs,
      async (write) => {
        await write(AppendPoolItemsRequest.fromPartial({
          header: {
            poolId, requestId: opts.requestId ?? randomUUID(),
            arrays: arrays.map(([name, t]) => ({
              name, dtype: DTYPE_ENUM[t.dtype] as DataType, shape: t.shape.map(BigInt),
            })),
          },
        }));
        for (let i = 0; i < arrays.length; i++) {
          const data = arrays[i][1].data;
          for (let off = 0; off < data.byteLength; off += chunkBytes) {
            await write({
              chunk: { arrayIndex: i, offset: BigInt(off), data: data.subarray(off, off + chunkBytes) },
            });
          }
        }
      });
  }

  /**
   * A client stream: `send` writes its messages (waiting for the stream to drain); resolves
   * to the response, or rejects with the server's status as an AssayError.
   */
  private async clientStream<M>(
    open: (md: grpc.Metadata, opts: Partial<grpc.CallOptions>,
           cb: (err: grpc.ServiceError | null, res: any) => void) => grpc.ClientWritableStream<M>,
    timeoutMs: number | undefined,
    send: (write: (m: M) => Promise<void>) => Promise<void>,
  ): Promise<any> {
    const [md, callOpts] = this.call(timeoutMs);
    let call!: grpc.ClientWritableStream<M>;
    const done = new Promise<any>((resolve, reject) => {
      call = open(md, callOpts,
        (err, res) => (err ? reject(AssayError.from(err)) : resolve(res)));
    });
    const write = async (m: M) => {
      if (!call.write(m)) await Promise.race([once(call, "drain"), done]);
    };
    try {
      await send(write);
      call.end();
    } catch (e) {
      // The server ended the stream early: its status (awaited below) says why. Anything else
      // (a file that cannot be read) cancels the call and is raised as it is.
      if (!(e instanceof AssayError)) {
        call.cancel();
        done.catch(() => undefined);
        throw e;
      }
    }
    return done;
  }
}

export type { DType };
