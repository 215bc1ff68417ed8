// Tensors as they travel: little-endian, row-major bytes with a dtype and a shape.
import { DataType } from "../gen/assay/v1/tensor.js";

export type DType = "FP32" | "FP16" | "FP64" | "INT32" | "INT64" | "BF16";

export const DTYPE_ENUM: Record<DType, DataType> = {
  FP32: DataType.DATA_TYPE_FP32,
  FP16: DataType.DATA_TYPE_FP16,
  FP64: DataType.DATA_TYPE_FP64,
  INT32: DataType.DATA_TYPE_INT32,
  INT64: DataType.DATA_TYPE_INT64,
  BF16: DataType.DATA_TYPE_BF16,
};

export const ITEMSIZE: Record<DType, number> = {
  FP32: 4, FP16: 2, FP64: 8, INT32: 4, INT64: 8, BF16: 2,
};

/** A dense array: `data` holds prod(shape) * itemsize little-endian bytes. */
export interface Tensor {
  dtype: DType;
  shape: number[];
  data: Uint8Array;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

type Typed = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint16Array;

function make(dtype: DType, values: Typed, shape: number[]): Tensor {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new RangeError(`bad dimension ${d} in [${shape}]`);
    n *= d;
  }
  if (n !== values.length) {
    throw new RangeError(`shape [${shape}] holds ${n} elements but the array has ${values.length}`);
  }
  if (LITTLE_ENDIAN) {
    // A view, not a copy: the bytes are copied once, when the request is serialized.
    return { dtype, shape, data: new Uint8Array(values.buffer, values.byteOffset, values.byteLength) };
  }
  const out = new Uint8Array(values.byteLength);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    switch (dtype) {
      case "FP32": view.setFloat32(i * 4, v as number, true); break;
      case "FP64": view.setFloat64(i * 8, v as number, true); break;
      case "INT32": view.setInt32(i * 4, v as number, true); break;
      case "INT64": view.setBigInt64(i * 8, v as bigint, true); break;
      default: view.setUint16(i * 2, v as number, true);
    }
  }
  return { dtype, shape, data: out };
}

/** float32 values, row-major. */
export const f32 = (v: Float32Array, shape: number[]) => make("FP32", v, shape);
/** float64 values, row-major. */
export const f64 = (v: Float64Array, shape: number[]) => make("FP64", v, shape);
/** int32 class labels. */
export const i32 = (v: Int32Array, shape: number[]) => make("INT32", v, shape);
/** int64 class labels. */
export const i64 = (v: BigInt64Array, shape: number[]) => make("INT64", v, shape);
/** IEEE binary16 bit patterns (see float32ToF16). */
export const f16Bits = (v: Uint16Array, shape: number[]) => make("FP16", v, shape);
/** bfloat16 bit patterns (see float32ToBF16). */
export const bf16Bits = (v: Uint16Array, shape: number[]) => make("BF16", v, shape);

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

/** binary16 bits of a number, rounded (as float32 first) to nearest even. */
export function float32ToF16(value: number): number {
  f32buf[0] = value;
  const x = u32buf[0];
  const sign = (x >>> 16) & 0x8000;
  const abs = x & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00;
  if (abs >= 0x477ff000) return sign | 0x7c00;
  if (abs < 0x38800000) {
    f32buf[0] = Math.abs(f32buf[0]);
    const scaled = f32buf[0] * 16777216;
    let r = Math.round(scaled);
    if (r - scaled === 0.5 && r % 2 === 1) r -= 1; // ties to even
    return sign | r;
  }
  let m = (abs + 0xc8000000) >>> 0;
  m = (m + 0x0fff + ((m >>> 13) & 1)) >>> 0;
  return sign | (m >>> 13);
}

/** float value of binary16 bits. */
export function f16ToFloat32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const man = h & 0x3ff;
  if (exp === 0) return (sign * man) / 16777216;
  if (exp === 31) return man ? NaN : sign * Infinity;
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

/** bfloat16 bits of a number, rounded (as float32 first) to nearest even. */
export function float32ToBF16(value: number): number {
  f32buf[0] = value;
  const x = u32buf[0];
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x40) & 0xffff;
  return (((x + 0x7fff + ((x >>> 16) & 1)) >>> 0) >>> 16) & 0xffff;
}
