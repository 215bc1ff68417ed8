// Retries come from the contract's service config, with one deadline per call: an
// in-process server counts the attempts (tests/clients/test_service_config.py has the same
// tests for the Python client).
import assert from "node:assert/strict";
import { test } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { AssayServiceService, CreatePoolResponse, SelectResponse } from "../gen/assay/v1/assay.js";
import { AssayError, Client, f32 } from "../src/index.js";

/** A server answering UNAVAILABLE to the first `failures` attempts (each after `delayMs`). */
async function flaky(failures: number, delayMs = 0) {
  const state = { attempts: 0, requestIds: new Set<string>() };
  const attempt = (callback: (err: grpc.ServiceError | null, value?: any) => void,
                   answer: () => any) => {
    const n = ++state.attempts;
    setTimeout(() => {
      if (n <= failures) {
        callback({ code: grpc.status.UNAVAILABLE, details: `attempt ${n}: restarting` } as any);
      } else {
        callback(null, answer());
      }
    }, delayMs);
  };
  const server = new grpc.Server();
  server.addService(AssayServiceService as any, {
    select: (call: any, callback: any) => {
      state.requestIds.add(call.request.requestId);
      attempt(callback, () => SelectResponse.fromPartial({
        indices: [1n], scores: [0.5], strategy: call.request.strategy,
        requestId: call.request.requestId }));
    },
    createPool: (call: any, callback: any) =>
      attempt(callback, () => CreatePoolResponse.fromPartial({ pool: { poolId: call.request.poolId } })),
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(),
                     (err, p) => (err ? reject(err) : resolve(p))));
  return { state, server, target: `127.0.0.1:${port}` };
}

const request = () => ({ strategy: "entropy", budget: 1,
                         inputs: { probs: f32(new Float32Array([0.5, 0.5, 0.5, 0.5]), [2, 2]) } });

test("UNAVAILABLE twice is retried by the service config", async () => {
  const { state, server, target } = await flaky(2);
  const client = new Client(target, { timeoutMs: 30_000 });
  try {
    const sel = await client.select(request());
    assert.equal(state.attempts, 3);
    assert.deepEqual(Array.from(sel.indices), [1n]);
    assert.equal(state.requestIds.size, 1);
  } finally {
    client.close();
    server.forceShutdown();
  }
});

test("one deadline covers every attempt", async () => {
  // Each attempt takes 0.4 s on the server: a 4th could start at 1.2 s at the earliest,
  // after the one 1 s deadline, so the call ends DEADLINE_EXCEEDED within 3 attempts.
  const { state, server, target } = await flaky(10, 400);
  const client = new Client(target, { timeoutMs: 1000 });
  try {
    await assert.rejects(client.select(request()),
      (e: AssayError) => e.codeName === "DEADLINE_EXCEEDED");
    assert.ok(state.attempts >= 1 && state.attempts <= 3, `${state.attempts} attempts`);
  } finally {
    client.close();
    server.forceShutdown();
  }
});

test("unsafe methods and disabled retries are sent once", async () => {
  let { state, server, target } = await flaky(1);
  let client = new Client(target, { timeoutMs: 30_000 });
  await assert.rejects(client.createPool("p"), (e: AssayError) => e.codeName === "UNAVAILABLE");
  assert.equal(state.attempts, 1);
  client.close();
  server.forceShutdown();
  ({ state, server, target } = await flaky(1));
  client = new Client(target, { timeoutMs: 30_000, retries: 0 });
  await assert.rejects(client.select(request()), (e: AssayError) => e.codeName === "UNAVAILABLE");
  assert.equal(state.attempts, 1);
  client.close();
  server.forceShutdown();
});
