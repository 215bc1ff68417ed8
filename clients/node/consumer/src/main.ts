// One Select over inline probabilities, through the installed package @assay/client.
// Usage: ASSAY_TARGET=127.0.0.1:50051 npm start
import { AssayError, Client, f32, type Selection } from "@assay/client";

const client = new Client(process.env.ASSAY_TARGET ?? "127.0.0.1:50051",
  { token: process.env.ASSAY_TOKEN });
// Four items, three classes, row-major [N, C]: the two most uncertain are items 1 and 2.
const probs = new Float32Array([
  0.98, 0.01, 0.01,
  0.34, 0.33, 0.33,
  0.60, 0.30, 0.10,
  0.50, 0.50, 0.00,
]);
try {
  const selection: Selection = await client.select({
    strategy: "entropy", budget: 2, inputs: { probs: f32(probs, [4, 3]) } });
  console.log(`consumer: selected [${Array.from(selection.indices).join(" ")}]`);
} catch (e) {
  if (e instanceof AssayError) {
    console.error(e.codeName, e.reason, e.field, e.details);
    process.exitCode = 1;
  } else {
    throw e;
  }
} finally {
  client.close();
}
