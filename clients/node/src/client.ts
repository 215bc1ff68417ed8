// Client of Assay over @grpc/grpc-js with ts-proto generated types.
import { randomUUID } from "node:crypto";
import { once } from "node:events";
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
import { DataType, dataTypeToJSON } from "../gen/assay/v1/tensor.js";
import { RichDetails, richDetails } from "./errors.js";
import { DTYPE_ENUM, DType, Tensor } from "./tensor.js";

export interface ClientOptions {
  /** Deadline of every call, in milliseconds (default 60 000). */
  timeoutMs?: number;
  /** Extra Select attempts on UNAVAILABLE, same request id (default 3). */
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
  | "labeled_probs" | "labels" | "model_inputs";

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
  /** Inline arrays by role; or give `poolId`. */
  inputs?: Partial<Record<Role, Tensor>>;
  poolId?: string;
  /** Integers (number or bigint) go as int_value; `{double: x}` forces a double. */
  params?: Record<string, Param>;
  seed?: bigint | number;
  requestId?: string;
  exclude?: ArrayLike<number | bigint>;
  timeoutMs?: number;
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
}

export interface Pool {
  poolId: string;
  itemCount: number;
  labeledCount: number;
  version: number;
  arrays: { name: string; dtype: string; shape: number[] }[];
  sizeBytes: number;
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
      name: a.name, dtype: dataTypeToJSON(a.dtype).replace("DATA_TYPE_", ""),
      shape: a.shape.map(Number),
    })),
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Client {
  private readonly stub: AssayServiceClient;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly token?: string;

  constructor(target: string, options: ClientOptions = {}) {
    const max = options.maxMessageBytes ?? 64 << 20;
    const channelOptions: Record<string, string | number> = {
      "grpc.max_send_message_length": max,
      "grpc.max_receive_message_length": max,
    };
    let creds = grpc.credentials.createInsecure();
    if (options.tls) {
      const { ca, cert, key, serverName } = options.tls;
      creds = grpc.credentials.createSsl(ca ?? null, key ?? null, cert ?? null);
      if (serverName) channelOptions["grpc.ssl_target_name_override"] = serverName;
    }
    this.stub = new AssayServiceClient(target, creds, channelOptions);
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.retries = options.retries ?? 3;
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

  private unary<Req, Res>(method: string, request: Req, timeoutMs?: number): Promise<Res> {
    const [md, opts] = this.call(timeoutMs);
    return new Promise((resolve, reject) => {
      (this.stub as any)[method](request, md, opts, (err: grpc.ServiceError | null, res: Res) =>
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
    for (const [k, v] of Object.entries(o.params ?? {})) req.params[k] = paramValue(v);
    if (o.poolId !== undefined) {
      req.poolId = o.poolId;
    } else {
      const inputs: Inputs = Inputs.fromPartial({});
      for (const [role, t] of Object.entries(o.inputs ?? {})) {
        const field = INPUT_FIELDS[role as Role];
        if (!field) throw new RangeError(`unknown input role ${role}`);
        (inputs as any)[field] = toWire(t as Tensor);
      }
      req.inputs = inputs;
    }
    return req;
  }

  /** Select items; retried on UNAVAILABLE with the same request id and backoff. */
  async select(o: SelectOptions): Promise<Selection> {
    const req = Client.selectRequest(o);
    for (let attempt = 0; ; attempt++) {
      try {
        const r: any = await this.unary("select", req, o.timeoutMs);
        return {
          indices: BigInt64Array.from(r.indices as bigint[]),
          scores: Float64Array.from(r.scores as number[]),
          strategy: r.strategy, backend: r.backend, seed: r.seed, poolVersion: r.poolVersion,
          requestId: r.requestId, metrics: r.metrics,
          pseudoLabelIndices: BigInt64Array.from(r.pseudoLabelIndices as bigint[]),
          pseudoLabels: BigInt64Array.from(r.pseudoLabels as bigint[]),
          computeSeconds: r.computeSeconds,
        };
      } catch (e) {
        const err = e as AssayError;
        if (err.code !== grpc.status.UNAVAILABLE || attempt >= this.retries) throw err;
        await sleep(Math.min(2000, 100 * 2 ** attempt));
      }
    }
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
  async append(poolId: string, arrays: [Role, Tensor][], opts: UploadOptions = {},
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
  async replace(poolId: string, arrays: [Role, Tensor][], opts: UploadOptions = {}): Promise<Pool> {
    return pool((await this.upload("replacePoolArrays", poolId, arrays, opts)).pool);
  }

  /** Stream a header, then every array in chunks, to an append or a replace. */
  private async upload(method: "appendPoolItems" | "replacePoolArrays", poolId: string,
                       arrays: [Role, Tensor][], opts: UploadOptions): Promise<any> {
    const chunkBytes = opts.chunkBytes ?? 4 << 20;
    const [md, callOpts] = this.call(opts.timeoutMs);
    // Both streams take messages of the same shape (AppendPoolItemsRequest's fields).
    let call!: grpc.ClientWritableStream<AppendPoolItemsRequest>;
    const done = new Promise<any>((resolve, reject) => {
      call = (this.stub as any)[method](md, callOpts,
        (err: grpc.ServiceError | null, res: any) => (err ? reject(AssayError.from(err)) : resolve(res)));
    });
    const write = async (m: AppendPoolItemsRequest) => {
      if (!call.write(m)) await Promise.race([once(call, "drain"), done]);
    };
    try {
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
      call.end();
    } catch {
      // The server ended the stream early: its status (awaited below) says why.
    }
    return done;
  }
}

export type { DType };
