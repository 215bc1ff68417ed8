import assert from "node:assert/strict";
import { test } from "node:test";
import { f16ToFloat32, f32, float32ToBF16, float32ToF16, i64 } from "../src/index.js";

test("float32 tensors are little-endian and row-major", () => {
  const t = f32(new Float32Array([1, -2.5, 0, 3, 4, 5]), [2, 3]);
  assert.equal(t.dtype, "FP32");
  assert.deepEqual(t.shape, [2, 3]);
  assert.equal(t.data.byteLength, 24);
  assert.deepEqual([...t.data.subarray(0, 4)], [0x00, 0x00, 0x80, 0x3f]);
  const i = i64(new BigInt64Array([1n, -1n]), [2]);
  assert.deepEqual([...i.data.subarray(0, 9)], [1, 0, 0, 0, 0, 0, 0, 0, 0xff]);
});

test("a shape that does not match the array is rejected", () => {
  assert.throws(() => f32(new Float32Array(6), [4, 2]), RangeError);
  assert.throws(() => f32(new Float32Array(6), [-2, -3]), RangeError);
});

test("binary16 and bfloat16 conversions round to nearest even", () => {
  const cases: [number, number][] = [[1, 0x3c00], [-2, 0xc000], [65504, 0x7bff], [65520, 0x7c00],
    [5.960464477539063e-8, 0x0001], [0, 0], [1 + 1 / 2048, 0x3c00], [1 + 3 / 2048, 0x3c02]];
  for (const [v, bits] of cases) assert.equal(float32ToF16(v), bits, `f16(${v})`);
  assert.equal(float32ToF16(NaN) & 0x7c00, 0x7c00);
  for (let h = 0; h < 0x7c00; h++) assert.equal(float32ToF16(f16ToFloat32(h)), h);
  assert.equal(float32ToBF16(1), 0x3f80);
  assert.equal(float32ToBF16(-3), 0xc040);
});
