// Registered models: how a Select names them (no server), then the model vectors against a live
// server (ASSAY_TARGET=host:port and ASSAY_MODEL_VECTORS, the directory that
// tests/clients/model_vectors.py writes; skipped when either is unset).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import {
  AssayError, Client, ClientOptions, Tensor, f32, f64, i32, i64, modelInputs,
} from "../src/index.js";

const target = process.env.ASSAY_TARGET ?? "";
const vectorsDir = process.env.ASSAY_MODEL_VECTORS ?? "";
const skip = !target ? "ASSAY_TARGET is not set: no server to test against"
  : !vectorsDir ? "ASSAY_MODEL_VECTORS is not set: no model vectors to replay" : false;

test("a Select names models, MC samples, batch size and named raw inputs", () => {
  const ids = i64(BigInt64Array.from([1n, 2n, 3n, 4n]), [2, 2]);
  const mask = i32(Int32Array.from([1, 1, 1, 0]), [2, 2]);
  const req = Client.selectRequest({
    strategy: "bald", budget: 1, models: ["text"], mcSamples: 4, batchSize: 8,
    inputs: Object.fromEntries(modelInputs({ input_ids: ids, attention_mask: mask })),
  });
  assert.deepEqual(req.modelIds, ["text"]);
  assert.equal(req.mcSamples, 4);
  assert.equal(req.batchSize, 8);
  assert.deepEqual(Object.keys(req.inputs!.namedModelInputs).sort(), ["attention_mask", "input_ids"]);
  assert.deepEqual(req.inputs!.namedModelInputs.input_ids.shape, [2n, 2n]);
  assert.equal(req.inputs!.modelInputs, undefined);
  assert.deepEqual(modelInputs({ input_ids: ids }).map(([name]) => name), ["model_inputs.input_ids"]);
  // Without models nothing of theirs is sent; an unknown role is refused before sending.
  const probs = f32(new Float32Array(2), [1, 2]);
  const plain = Client.selectRequest({ strategy: "entropy", budget: 1, inputs: { probs } });
  assert.deepEqual([plain.modelIds, plain.mcSamples, plain.batchSize], [[], 0, 0]);
  assert.throws(() => Client.selectRequest(
    { strategy: "entropy", budget: 1, inputs: { logits: ids } as any }), RangeError);
  assert.throws(() => Client.selectRequest({ strategy: "entropy", budget: 1, poolId: "texts",
                                             inputs: { "model_inputs.input_ids": ids } }), RangeError);
});

interface VTensor { dtype: string; shape: number[]; data: number[] }

/** A tensor of model.json (numpy's dtype names). */
function tensor(v: VTensor): Tensor {
  switch (v.dtype) {
    case "int64": return i64(BigInt64Array.from(v.data, (x) => BigInt(x)), v.shape);
    case "int32": return i32(Int32Array.from(v.data), v.shape);
    case "float32": return f32(Float32Array.from(v.data), v.shape);
    case "float64": return f64(Float64Array.from(v.data), v.shape);
  }
  throw new Error(`unknown dtype ${v.dtype}`);
}

test("model vectors", { skip }, async (t) => {
  const v = JSON.parse(readFileSync(join(vectorsDir, "model.json"), "utf8"));
  const file = join(vectorsDir, v.model_file);
  const raw: Record<string, Tensor> = Object.fromEntries(
    Object.entries(v.inputs).map(([name, x]) => [name, tensor(x as VTensor)]));
  const names = Object.keys(v.inputs);
  const options: ClientOptions = { timeoutMs: 300_000, token: process.env.ASSAY_TOKEN };
  const client = new Client(target, options);
  const modelId = "text-node", poolId = "texts-node";
  let registered = false, created = false;
  try {
    // Small chunks, so the upload takes several messages.
    const model = await client.registerModel(modelId, file, v.outputs, { chunkBytes: 64 << 10 });
    registered = true;
    assert.equal(model.modelId, modelId);
    assert.deepEqual(model.outputs, v.outputs);
    assert.deepEqual(model.inputs.map((i) => [i.name, i.array]),
      names.map((n) => [n, `model_inputs.${n}`]));
    const bytes = readFileSync(file);
    assert.equal(model.sizeBytes, bytes.byteLength);
    assert.equal(model.sha256, createHash("sha256").update(bytes).digest("hex"));
    assert.ok(model.dropoutCount > 0, "the vectors' MC case needs Dropout nodes");
    assert.deepEqual(await client.getModel(modelId), model);
    // From bytes in memory, the same file under another id.
    const copy = await client.registerModel(`${modelId}-bytes`, new Uint8Array(bytes), v.outputs);
    assert.deepEqual([copy.sha256, copy.sizeBytes, copy.inputs],
      [model.sha256, model.sizeBytes, model.inputs]);
    const listed = (await client.listModels(1)).map((m) => m.modelId);
    assert.ok(listed.includes(modelId) && listed.includes(`${modelId}-bytes`), `listModels: ${listed}`);
    await client.deleteModel(`${modelId}-bytes`);

    await client.createPool(poolId);
    created = true;
    const appended = await client.append(poolId, modelInputs(raw), { chunkBytes: 256 });
    assert.deepEqual(appended.pool.arrays.map((a) => a.name).sort(),
      names.map((n) => `model_inputs.${n}`).sort());
    await client.label(poolId, v.labeled, v.labels);

    for (const c of v.cases) {
      await t.test(c.name, async () => {
        const sel = await client.select({
          strategy: c.strategy, budget: c.budget, models: [modelId], mcSamples: c.mc_samples,
          seed: c.seed, batchSize: c.batch_size,
          ...(c.source === "pool" ? { poolId } : { inputs: Object.fromEntries(modelInputs(raw)) }),
        });
        assert.deepEqual(Array.from(sel.indices, Number), c.indices, `${c.name} (seed ${c.seed})`);
        assert.equal(sel.scores.length, c.scores.length);
        c.scores.forEach((s: number, i: number) => assert.ok(
          Math.abs(sel.scores[i] - s) <= 1e-9 + c.tolerance * Math.abs(s),
          `${c.name} score ${i}: ${sel.scores[i]} vs ${s} (seed ${c.seed})`));
        assert.deepEqual(sel.executionProviders, [v.execution_provider]);
      });
    }

    await t.test("a binding to a graph input the model lacks is INPUT_NOT_FOUND", async () => {
      await assert.rejects(
        client.registerModel("text-node-bad", file, v.outputs, {
          inputs: { no_such_input: "model_inputs.input_ids" },
        }),
        (e: AssayError) => {
          assert.ok(e instanceof AssayError, String(e));
          assert.equal(e.codeName, "INVALID_ARGUMENT", e.message);
          assert.equal(e.reason, "INPUT_NOT_FOUND", e.message);
          assert.match(e.field, /input_name/);
          return true;
        });
      await assert.rejects(client.getModel("text-node-bad"),
        (e: AssayError) => e.codeName === "NOT_FOUND");
    });

    await client.deletePool(poolId);
    created = false;
    await client.deleteModel(modelId);
    registered = false;
    await assert.rejects(client.getModel(modelId), (e: AssayError) => e.codeName === "NOT_FOUND");
  } finally {
    // Only when a step above failed.
    if (created) await client.deletePool(poolId).catch(() => undefined);
    if (registered) await client.deleteModel(modelId).catch(() => undefined);
    client.close();
  }
});
