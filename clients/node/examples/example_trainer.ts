// An active-learning loop against Assay: a nearest-centroid classifier over synthetic
// embeddings predicts probabilities; the pool is streamed up, labeled items marked,
// Assay picks the next batch, and the loop repeats.
//   node dist/examples/example_trainer.js [--target host:port] [--rounds 5] [--token T]
import { parseArgs } from "node:util";
import { readFileSync } from "node:fs";
import { AssayError, Client, f32 } from "../src/index.js";

const { values: args } = parseArgs({ options: {
  target: { type: "string", default: process.env.ASSAY_TARGET ?? "127.0.0.1:50051" },
  rounds: { type: "string", default: "5" },
  "pool-size": { type: "string", default: "4000" },
  budget: { type: "string", default: "20" },
  strategy: { type: "string", default: "entropy" },
  token: { type: "string", default: process.env.ASSAY_TOKEN },
  "tls-ca": { type: "string" }, "tls-cert": { type: "string" }, "tls-key": { type: "string" },
} });

const n = Number(args["pool-size"]), d = 16, classes = 4;
let state = 7;
const uniform = () => ((state = (state * 1103515245 + 12345) % 2147483648) + 0.5) / 2147483648;
const normal = () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());

const centers = Array.from({ length: classes }, () => Array.from({ length: d }, () => normal() * 0.6));
const emb = new Float32Array(n * d);
const truth = Array.from({ length: n }, (_, i) => i % classes);
for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) emb[i * d + j] = centers[truth[i]][j] + normal();

function predict(labeled: number[], probs: Float32Array): number {
  const mean = Array.from({ length: classes }, () => new Float64Array(d));
  const count = new Array(classes).fill(0);
  for (const i of labeled) {
    count[truth[i]]++;
    for (let j = 0; j < d; j++) mean[truth[i]][j] += emb[i * d + j];
  }
  let correct = 0;
  for (let i = 0; i < n; i++) {
    const logits = mean.map((m, k) => {
      if (!count[k]) return -Infinity;
      let dist = 0;
      for (let j = 0; j < d; j++) dist += (emb[i * d + j] - m[j] / count[k]) ** 2;
      return (-2 * dist) / d;
    });
    const top = Math.max(...logits);
    const z = logits.reduce((s, l) => s + Math.exp(l - top), 0);
    logits.forEach((l, k) => (probs[i * classes + k] = Math.exp(l - top) / z));
    const best = logits.indexOf(top);
    if (best === truth[i]) correct++;
  }
  return correct / n;
}

const client = new Client(args.target!, {
  token: args.token,
  tls: args["tls-ca"] ? {
    ca: readFileSync(args["tls-ca"]),
    cert: args["tls-cert"] ? readFileSync(args["tls-cert"]) : undefined,
    key: args["tls-key"] ? readFileSync(args["tls-key"]) : undefined,
  } : undefined,
});
const labeled = [0, 1, 2, 3];
const probs = new Float32Array(n * classes);
try {
  for (let round = 0; round < Number(args.rounds); round++) {
    const acc = predict(labeled, probs);
    const pool = `example-trainer-node-${round}`;
    await client.deletePool(pool).catch((e: AssayError) => {
      if (e.codeName !== "NOT_FOUND") throw e;
    });
    await client.createPool(pool);
    await client.append(pool, [["embeddings", f32(emb, [n, d])], ["probs", f32(probs, [n, classes])]],
      { chunkBytes: 64 << 10 });
    await client.label(pool, labeled, labeled.map((i) => truth[i]));
    const sel = await client.select({ strategy: args.strategy!, budget: Number(args.budget),
                                      poolId: pool, seed: 1234 });
    console.log(`round ${round}: accuracy ${acc.toFixed(3)} with ${labeled.length} labels; ` +
      `selected ${sel.indices.length} (best ${sel.indices[0]})`);
    labeled.push(...Array.from(sel.indices, Number));
    await client.deletePool(pool);
  }
} finally {
  client.close();
}
