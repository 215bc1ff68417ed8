package dev.assay.client;

import com.google.protobuf.ByteString;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;

/**
 * A dense array as the protocol carries it: a dtype, a shape (outermost first, row-major) and
 * its elements as little-endian bytes. The factories take Java arrays in row-major order and
 * write little-endian bytes whatever the host's byte order; a Tensor built from raw bytes must
 * hold little-endian data.
 */
public final class Tensor {
  private final DType dtype;
  private final long[] shape;
  private final ByteString data;

  /** A tensor over raw little-endian bytes; their length must be prod(shape) * itemsize. */
  public Tensor(DType dtype, long[] shape, ByteString data) {
    this.dtype = dtype;
    this.shape = shape.clone();
    this.data = data;
    long n = elements(this.shape);
    if (data.size() != n * dtype.itemSize()) {
      throw new IllegalArgumentException(
          "shape " + Arrays.toString(shape) + " of " + dtype + " needs " + n * dtype.itemSize()
              + " bytes, got " + data.size());
    }
  }

  /** Number of elements of a shape; IllegalArgumentException for a negative dimension. */
  static long elements(long[] shape) {
    long n = 1;
    for (long d : shape) {
      if (d < 0) {
        throw new IllegalArgumentException("negative dimension in " + Arrays.toString(shape));
      }
      n = Math.multiplyExact(n, d);
    }
    return n;
  }

  private static ByteBuffer buffer(int count, DType dtype, long[] shape) {
    if (elements(shape) != count) {
      throw new IllegalArgumentException(
          count + " values do not fill shape " + Arrays.toString(shape));
    }
    return ByteBuffer.allocate(count * dtype.itemSize()).order(ByteOrder.LITTLE_ENDIAN);
  }

  private static Tensor of(DType dtype, long[] shape, ByteBuffer b) {
    b.flip();
    return new Tensor(dtype, shape, ByteString.copyFrom(b));
  }

  /** FP32 tensor of row-major values. */
  public static Tensor f32(float[] values, long... shape) {
    ByteBuffer b = buffer(values.length, DType.FP32, shape);
    b.asFloatBuffer().put(values);
    b.position(b.limit());
    return of(DType.FP32, shape, b);
  }

  /** FP64 tensor of row-major values. */
  public static Tensor f64(double[] values, long... shape) {
    ByteBuffer b = buffer(values.length, DType.FP64, shape);
    b.asDoubleBuffer().put(values);
    b.position(b.limit());
    return of(DType.FP64, shape, b);
  }

  /** INT32 tensor of row-major values. */
  public static Tensor i32(int[] values, long... shape) {
    ByteBuffer b = buffer(values.length, DType.INT32, shape);
    b.asIntBuffer().put(values);
    b.position(b.limit());
    return of(DType.INT32, shape, b);
  }

  /** INT64 tensor of row-major values. */
  public static Tensor i64(long[] values, long... shape) {
    ByteBuffer b = buffer(values.length, DType.INT64, shape);
    b.asLongBuffer().put(values);
    b.position(b.limit());
    return of(DType.INT64, shape, b);
  }

  /** FP16 tensor of IEEE binary16 bit patterns (e.g. from {@code Float.floatToFloat16}). */
  public static Tensor f16Bits(short[] bits, long... shape) {
    return bits16(DType.FP16, bits, shape);
  }

  /** BF16 tensor of bfloat16 bit patterns (the upper 16 bits of each binary32). */
  public static Tensor bf16Bits(short[] bits, long... shape) {
    return bits16(DType.BF16, bits, shape);
  }

  /**
   * BF16 tensor of float values, each rounded to the nearest bfloat16 (ties to even; NaN stays
   * NaN).
   */
  public static Tensor bf16(float[] values, long... shape) {
    short[] bits = new short[values.length];
    for (int i = 0; i < values.length; i++) {
      int x = Float.floatToRawIntBits(values[i]);
      if (Float.isNaN(values[i])) {
        bits[i] = (short) ((x >>> 16) | 0x0040);
      } else {
        bits[i] = (short) ((x + 0x7FFF + ((x >>> 16) & 1)) >>> 16);
      }
    }
    return bits16(DType.BF16, bits, shape);
  }

  private static Tensor bits16(DType dtype, short[] bits, long[] shape) {
    ByteBuffer b = buffer(bits.length, dtype, shape);
    b.asShortBuffer().put(bits);
    b.position(b.limit());
    return of(dtype, shape, b);
  }

  /** The element type. */
  public DType dtype() {
    return dtype;
  }

  /** A copy of the shape. */
  public long[] shape() {
    return shape.clone();
  }

  /** The little-endian bytes. */
  public ByteString data() {
    return data;
  }

  /** Number of elements. */
  public long size() {
    return elements(shape);
  }

  /** The wire message. */
  public dev.assay.v1.Tensor toProto() {
    dev.assay.v1.Tensor.Builder t = dev.assay.v1.Tensor.newBuilder().setDtype(dtype.proto()).setData(data);
    for (long d : shape) {
      t.addShape(d);
    }
    return t.build();
  }

  /** A Tensor of a wire message (its bytes are shared, not copied). */
  public static Tensor fromProto(dev.assay.v1.Tensor t) {
    long[] shape = t.getShapeList().stream().mapToLong(Long::longValue).toArray();
    return new Tensor(DType.of(t.getDtype()), shape, t.getData());
  }

  @Override
  public String toString() {
    return "Tensor(" + dtype + ", " + Arrays.toString(shape) + ")";
  }
}
