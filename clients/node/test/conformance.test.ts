// The conformance vectors and client behaviour against a live server (ASSAY_TARGET=host:port;
// skipped when unset). ASSAY_TOKEN and ASSAY_TLS_* configure auth and TLS.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import {
  AssayError, Client, ClientOptions, Param, Role, SelectOptions, Tensor,
  bf16Bits, f16Bits, f32, f64, i32, i64,
} from "../src/index.js";

const here = dirname(fileURLToPath(import.meta.url));
const target = process.env.ASSAY_TARGET ?? "";
const skip = target ? false : "ASSAY_TARGET is not set: no server to test against";
const vectorsPath = process.env.ASSAY_VECTORS ??
  join(here, "..", "..", "..", "..", "tests", "vectors", "select_vectors.json");

function options(): ClientOptions {
  // Long enough for a first Select that compiles its kernel on a busy 2-core machine
  // (over 60 s was seen); a healthy warm server answers the vectors in milliseconds.
  const o: ClientOptions = { timeoutMs: 300_000, token: process.env.ASSAY_TOKEN };
  if (process.env.ASSAY_TLS_CA) {
    o.tls = {
      ca: readFileSync(process.env.ASSAY_TLS_CA),
      cert: process.env.ASSAY_TLS_CERT ? readFileSync(process.env.ASSAY_TLS_CERT) : undefined,
      key: process.env.ASSAY_TLS_KEY ? readFileSync(process.env.ASSAY_TLS_KEY) : undefined,
      serverName: process.env.ASSAY_TLS_SERVER_NAME,
    };
  }
  return o;
}

interface VTensor { dtype: string; shape: number[]; values?: number[]; bits?: number[] }

function tensor(v: VTensor): Tensor {
  switch (v.dtype) {
    case "FP16": return f16Bits(Uint16Array.from(v.bits!), v.shape);
    case "BF16": return bf16Bits(Uint16Array.from(v.bits!), v.shape);
    case "FP32": return f32(Float32Array.from(v.values!), v.shape);
    case "FP64": return f64(Float64Array.from(v.values!), v.shape);
    case "INT32": return i32(Int32Array.from(v.values!), v.shape);
    case "INT64": return i64(BigInt64Array.from(v.values!, (x) => BigInt(x)), v.shape);
  }
  throw new Error(`unknown dtype ${v.dtype}`);
}

function params(p: Record<string, Record<string, unknown>> | undefined): Record<string, Param> {
  const out: Record<string, Param> = {};
  for (const [k, v] of Object.entries(p ?? {})) {
    const [kind, x] = Object.entries(v)[0];
    out[k] = kind === "int" ? BigInt(x as number) : kind === "double" ? { double: x as number }
      : (x as string | boolean);
  }
  return out;
}

async function runCase(client: Client, c: any): Promise<void> {
  const o: SelectOptions = {
    strategy: c.strategy, budget: c.budget, params: params(c.params),
    seed: c.seed, exclude: c.exclude,
  };
  let poolId: string | undefined;
  try {
    if (c.pool) {
      poolId = `node-${randomUUID().slice(0, 12)}`;
      await client.createPool(poolId);
      for (const part of c.pool.appends) {
        const arrays = Object.entries(part).map(([r, t]) => [r, tensor(t as VTensor)] as [Role, Tensor]);
        await client.append(poolId, arrays, { chunkBytes: c.pool.chunk_bytes });
      }
      if (c.pool.label) await client.label(poolId, c.pool.label.indices, c.pool.label.labels);
      o.poolId = poolId;
    } else {
      o.inputs = Object.fromEntries(
        Object.entries(c.inputs).map(([r, t]) => [r, tensor(t as VTensor)]));
    }
    const want = c.expect;
    if (want.error) {
      await assert.rejects(client.select(o), (e: AssayError) => {
        assert.equal(e.codeName, want.error, e.message);
        return true;
      });
      return;
    }
    const sel = await client.select(o);
    assert.deepEqual(Array.from(sel.indices, Number), want.indices);
    assert.equal(sel.scores.length, want.scores.length);
    want.scores.forEach((raw: number | string, i: number) => {
      const s = Number(raw); // "Infinity", "-Infinity", "NaN" for non-finite scores
      const same = Number.isFinite(s)
        ? Math.abs(sel.scores[i] - s) <= want.atol + want.rtol * Math.abs(s)
        : Object.is(sel.scores[i], s);
      assert.ok(same, `score ${i}: ${sel.scores[i]} vs ${raw}`);
    });
    assert.deepEqual(Array.from(sel.pseudoLabelIndices, Number), want.pseudo_label_indices ?? []);
    assert.deepEqual(Array.from(sel.pseudoLabels, Number), want.pseudo_labels ?? []);
  } finally {
    if (poolId) await client.deletePool(poolId);
  }
}

test("conformance vectors", { skip }, async (t) => {
  const doc = JSON.parse(readFileSync(vectorsPath, "utf8"));
  const client = new Client(target, options());
  let passed = 0, failed = 0;
  try {
    for (const c of doc.cases) {
      await t.test(c.name, async () => {
        try {
          await runCase(client, c);
          passed++;
        } catch (e) {
          failed++;
          throw e;
        }
      });
    }
  } finally {
    client.close();
    console.log(`conformance: ${passed} passed, ${failed} failed`);
  }
});

const probs = () => f32(new Float32Array([0.9, 0.1, 0.5, 0.5, 0.6, 0.4, 0.99, 0.01]), [4, 2]);

test("client behaviour", { skip }, async (t) => {
  const client = new Client(target, options());
  try {
    await t.test("listStrategies", async () => {
      const all = await client.listStrategies();
      const e = all.find((s) => s.name === "entropy");
      assert.deepEqual(e?.requiredInputs, ["probs"]);
    });
    await t.test("a retried request id answers identically", async () => {
      const o: SelectOptions = { strategy: "entropy", budget: 2, inputs: { probs: probs() },
                                 requestId: randomUUID() };
      const a = await client.select(o), b = await client.select(o);
      assert.deepEqual(Array.from(a.indices), [1n, 2n]);
      assert.deepEqual(a, b);
      await assert.rejects(client.select({ ...o, budget: 3 }),
        (e: AssayError) => e.codeName === "FAILED_PRECONDITION");
    });
    await t.test("UNAVAILABLE is retried by the service config, then raised", async () => {
      // retry.test.ts counts the attempts.
      const dead = new Client("127.0.0.1:1", { retries: 2, timeoutMs: 2000 });
      await assert.rejects(dead.select({ strategy: "entropy", budget: 1, inputs: { probs: probs() } }),
        (e: AssayError) => e.codeName === "UNAVAILABLE");
      dead.close();
    });
    await t.test("every call has a deadline", async () => {
      const big = f32(new Float32Array(400_000 * 10), [400_000, 10]);
      await assert.rejects(client.select({ strategy: "entropy", budget: 1, inputs: { probs: big },
                                           timeoutMs: 1 }),
        (e: AssayError) => e.codeName === "DEADLINE_EXCEEDED");
    });
    await t.test("pool lifecycle", async () => {
      const id = `node-life-${randomUUID().slice(0, 8)}`;
      await client.createPool(id);
      const emb = Float32Array.from({ length: 3000 }, (_, i) => i % 17);
      const r = await client.append(id, [["embeddings", f32(emb, [1000, 3])]], { chunkBytes: 1024 });
      assert.equal(r.appendedCount, 1000);
      assert.deepEqual(r.pool.arrays[0].shape, [1000, 3]);
      assert.equal((await client.label(id, [4, 5], [1, 0])).labeledCount, 2);
      assert.ok((await client.listPools(2)).some((p) => p.poolId === id));
      await client.deletePool(id);
      await assert.rejects(client.getPool(id), (e: AssayError) => e.codeName === "NOT_FOUND");
      // A stream the server rejects reports the server's status.
      await assert.rejects(client.append(id, [["embeddings", f32(emb, [1000, 3])]]),
        (e: AssayError) => e.codeName === "NOT_FOUND");
    });
    await t.test("a call without the bearer token is UNAUTHENTICATED",
      { skip: process.env.ASSAY_TOKEN ? false : "the server under test has no token" }, async () => {
        const anon = new Client(target, { ...options(), token: undefined });
        await assert.rejects(anon.listStrategies(), (e: AssayError) => e.codeName === "UNAUTHENTICATED");
        anon.close();
      });
  } finally {
    client.close();
  }
});

test("a round replaces the pool's probs", { skip }, async () => {
  const client = new Client(target, options());
  const id = `node-round-${randomUUID().slice(0, 8)}`;
  const n = 60, k = 3;
  let state = 11;
  const rand = () => ((state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const roundProbs = () => {
    const p = new Float32Array(n * k);
    for (let i = 0; i < n; i++) {
      let sum = 0;
      for (let j = 0; j < k; j++) sum += p[i * k + j] = 0.05 + 0.95 * rand();
      for (let j = 0; j < k; j++) p[i * k + j] /= sum;
    }
    return p;
  };
  const first = roundProbs(), second = roundProbs();
  try {
    await client.createPool(id);
    await client.append(id, [["probs", f32(first, [n, k])]], { chunkBytes: 256 });
    const labeled = await client.label(id, [7], [2]);
    const after = await client.replace(id, [["probs", f32(second, [n, k])]], { chunkBytes: 256 });
    assert.ok(after.version > labeled.version, `version ${after.version} after ${labeled.version}`);
    assert.equal(after.itemCount, n);
    assert.equal(after.labeledCount, 1);
    const got = await client.select({ strategy: "entropy", budget: 5, poolId: id });
    const want = await client.select({ strategy: "entropy", budget: 5,
                                       inputs: { probs: f32(second, [n, k]) }, exclude: [7] });
    assert.equal(got.poolVersion, BigInt(after.version));
    assert.deepEqual(got.indices, want.indices);
    want.scores.forEach((s, i) =>
      assert.ok(Math.abs(got.scores[i] - s) <= 1e-6 + 1e-6 * Math.abs(s), `score ${i}`));
    // A replace that does not cover the pool's items is refused and changes nothing.
    await assert.rejects(client.replace(id, [["probs", f32(second.subarray(0, (n - 1) * k), [n - 1, k])]]),
      (e: AssayError) => e.codeName === "INVALID_ARGUMENT");
    assert.equal((await client.getPool(id)).version, after.version);
  } finally {
    await client.deletePool(id).catch(() => undefined);
    client.close();
  }
});
