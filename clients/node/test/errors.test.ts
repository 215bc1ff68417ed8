// The error type's own tests: decoding a status built here, then a live server's
// (ASSAY_TARGET=host:port; skipped when unset).
import assert from "node:assert/strict";
import { test } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { Any } from "../gen/google/protobuf/any.js";
import { ErrorInfo, RetryInfo } from "../gen/google/rpc/error_details.js";
import { Status } from "../gen/google/rpc/status.js";
import { AssayError, Client } from "../src/index.js";
import { decodeStatus } from "../src/errors.js";

const target = process.env.ASSAY_TARGET ?? "";

function packed(typeName: string, value: Uint8Array): Any {
  return { typeUrl: `type.googleapis.com/${typeName}`, value };
}

test("AssayError reads reason, field and retry delay from the status details", () => {
  const status = Status.encode({
    code: grpc.status.RESOURCE_EXHAUSTED, message: "busy", details: [
      packed("google.rpc.ErrorInfo", ErrorInfo.encode(
        { reason: "OTHER", domain: "example.com", metadata: {} }).finish()),
      packed("google.rpc.ErrorInfo", ErrorInfo.encode(
        { reason: "TOO_MANY_REQUESTS", domain: "assay.v1", metadata: { field: "pool_id" } })
        .finish()),
      packed("google.rpc.RetryInfo", RetryInfo.encode(
        { retryDelay: { seconds: 1n, nanos: 250_000_000 } }).finish()),
    ],
  }).finish();
  assert.deepEqual(decodeStatus(status),
    { reason: "TOO_MANY_REQUESTS", field: "pool_id", retryDelayMs: 1250 });

  const metadata = new grpc.Metadata();
  metadata.set("grpc-status-details-bin", Buffer.from(status));
  const err = AssayError.from(
    { code: grpc.status.RESOURCE_EXHAUSTED, details: "busy", metadata, message: "" });
  assert.equal(err.reason, "TOO_MANY_REQUESTS");
  assert.equal(err.field, "pool_id");
  assert.equal(err.retryDelayMs, 1250);
  assert.equal(err.message, "RESOURCE_EXHAUSTED TOO_MANY_REQUESTS: busy");
});

test("a status without details has a code but no reason", () => {
  const err = AssayError.from({ code: grpc.status.UNAVAILABLE, details: "down",
    metadata: new grpc.Metadata(), message: "" });
  assert.equal(err.codeName, "UNAVAILABLE");
  assert.equal(err.reason, "");
  assert.equal(err.field, "");
  assert.equal(err.retryDelayMs, undefined);
  assert.deepEqual(decodeStatus(Uint8Array.of(0xff, 0xff)), {});
});

test("a server error carries its reason and field",
  { skip: target ? false : "ASSAY_TARGET is not set: no server to test against" }, async () => {
    const client = new Client(target, { timeoutMs: 30_000, token: process.env.ASSAY_TOKEN });
    try {
      await assert.rejects(client.getPool("no-such-pool-ts"), (err: unknown) => {
        assert.ok(err instanceof AssayError);
        assert.equal(err.codeName, "NOT_FOUND");
        assert.equal(err.reason, "POOL_NOT_FOUND");
        assert.equal(err.field, "pool_id");
        assert.equal(err.retryDelayMs, undefined);
        return true;
      });
    } finally {
      client.close();
    }
  });
