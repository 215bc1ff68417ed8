// The active-learning round loop of a TypeScript trainer against Assay: the code to copy.
//
// One pool lives through every round. Its arrays go up once: the features, which never
// change ("embeddings"), and the first model's class probabilities ("probs"). The seed
// labels go up once too. Then each round:
//   1. select: Assay picks the next batch from the pool's current version; labeled items
//      are never picked again, so nothing is excluded by hand;
//   2. label: only the new batch's labels are sent, the earlier ones stay in the pool;
//   3. retrain on every label so far and predict the whole pool again;
//   4. replace: the new probs take the place of the old ones for all N items in one
//      streamed call; the pool gets a new version, which the next select reports.
// The pool is deleted at the end.
//
// The model stands in for yours: a nearest-centroid classifier over synthetic embeddings,
// where "retraining" is taking the class means of the labeled items. The run checks what
// the loop promises and exits 1 otherwise: each select answers from the version the last
// call left (so versions increase round by round), never picks an item labeled before,
// and the pool keeps every label sent.
//
//   node dist/examples/example_trainer.js [--target host:port] [--rounds 5] [--pool-size 4000]
//     [--budget 20] [--strategy entropy] [--token T] [--tls-ca ca.pem [--tls-cert c.pem
//     --tls-key k.pem]] [--skip-without-target]
import { parseArgs } from "node:util";
import { readFileSync } from "node:fs";
import { AssayError, Client, f32 } from "../src/index.js";

const { values: args } = parseArgs({ options: {
  target: { type: "string", default: process.env.ASSAY_TARGET },
  rounds: { type: "string", default: "5" },
  "pool-size": { type: "string", default: "4000" },
  budget: { type: "string", default: "20" },
  strategy: { type: "string", default: "entropy" },
  token: { type: "string", default: process.env.ASSAY_TOKEN },
  "tls-ca": { type: "string", default: process.env.ASSAY_TLS_CA },
  "tls-cert": { type: "string", default: process.env.ASSAY_TLS_CERT },
  "tls-key": { type: "string", default: process.env.ASSAY_TLS_KEY },
  "skip-without-target": { type: "boolean", default: false },
} });
if (!args.target) {
  if (args["skip-without-target"]) {
    console.log("ASSAY_TARGET is not set: skipped");
    process.exit(77);
  }
  args.target = "127.0.0.1:50051";
}

// Synthetic data: N items around the class centers; truth[i] is what a labeler says.
const n = Number(args["pool-size"]), d = 16, classes = 4;
let state = 7;
const uniform = () => ((state = (state * 1103515245 + 12345) % 2147483648) + 0.5) / 2147483648;
const normal = () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
const centers = Array.from({ length: classes }, () => Array.from({ length: d }, () => normal() * 0.6));
const emb = new Float32Array(n * d);
const truth = Array.from({ length: n }, (_, i) => i % classes);
for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) emb[i * d + j] = centers[truth[i]][j] + normal();

// The stand-in model: fit class means on the labeled items, then write softmax
// probabilities of negative squared distances for every item. Returns the accuracy.
function retrainAndPredict(labeled: number[], probs: Float32Array): number {
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
    if (logits.indexOf(top) === truth[i]) correct++;
  }
  return correct / n;
}

function expect(ok: boolean, what: string): void {
  if (!ok) throw new Error(what);
}

const client = new Client(args.target, {
  timeoutMs: 300_000,  // a cold server may compile the strategy's kernel on the first select
  token: args.token,
  tls: args["tls-ca"] ? {
    ca: readFileSync(args["tls-ca"]),
    cert: args["tls-cert"] ? readFileSync(args["tls-cert"]) : undefined,
    key: args["tls-key"] ? readFileSync(args["tls-key"]) : undefined,
  } : undefined,
});
const pool = "example-trainer-node";
const labeled = [0, 1, 2, 3];  // seed set: one item per class
const isLabeled = new Uint8Array(n);
labeled.forEach((i) => (isLabeled[i] = 1));
try {
  await client.deletePool(pool).catch((e: AssayError) => {  // a leftover of an interrupted run
    if (e.codeName !== "NOT_FOUND") throw e;
  });

  // Once: the pool, its features and the first model's outputs, the seed labels.
  const probs = new Float32Array(n * classes);
  let accuracy = retrainAndPredict(labeled, probs);
  await client.createPool(pool);
  await client.append(pool, [["embeddings", f32(emb, [n, d])], ["probs", f32(probs, [n, classes])]],
    { chunkBytes: 64 << 10 });
  let version = (await client.label(pool, labeled, labeled.map((i) => truth[i]))).version;

  let lastVersion = -1;
  for (let round = 0; round < Number(args.rounds); round++) {
    // 1. Select from the pool: no arrays travel, the server uses what it holds.
    const sel = await client.select({ strategy: args.strategy!, budget: Number(args.budget),
                                      poolId: pool, seed: 1234 });
    const used = Number(sel.poolVersion);
    expect(used === version && used > lastVersion,
      `round ${round}: the select used pool version ${used}, not ${version}`);
    lastVersion = used;
    const batch = Array.from(sel.indices, Number);
    for (const i of batch) {
      expect(i >= 0 && i < n && !isLabeled[i], `round ${round}: item ${i} was selected although labeled`);
      isLabeled[i] = 1;
    }
    console.log(`round ${round}: pool version ${used}, accuracy ${accuracy.toFixed(3)} with ` +
      `${labeled.length} labels; selected ${batch.length} (best ${batch[0]})`);

    // 2. Label the new batch only; the pool keeps the earlier labels.
    const after = await client.label(pool, batch, batch.map((i) => truth[i]));
    labeled.push(...batch);
    expect(after.labeledCount === labeled.length,
      `the pool holds ${after.labeledCount} labels, not ${labeled.length}`);

    // 3. Retrain on every label so far; predict the whole pool.
    accuracy = retrainAndPredict(labeled, probs);

    // 4. Replace the model's outputs for all N items (streamed in chunks); the
    //    embeddings and the labels stay as they are.
    version = (await client.replace(pool, [["probs", f32(probs, [n, classes])]],
                                    { chunkBytes: 64 << 10 })).version;
  }
  console.log(`final: accuracy ${accuracy.toFixed(3)} with ${labeled.length} labels`);
  await client.deletePool(pool);
} catch (e) {
  console.error(e instanceof AssayError ? `assay call failed: ${e.message}` : `check failed: ${(e as Error).message}`);
  process.exitCode = 1;
} finally {
  client.close();
}
