package dev.assay.client;

import dev.assay.v1.DataType;

/** Element type of a {@link Tensor}: the contract's {@code DataType}, with its size in bytes. */
public enum DType {
  /** IEEE-754 binary32. */
  FP32(DataType.DATA_TYPE_FP32, 4),
  /** IEEE-754 binary16 (sent as its 16-bit patterns). */
  FP16(DataType.DATA_TYPE_FP16, 2),
  /** IEEE-754 binary64. */
  FP64(DataType.DATA_TYPE_FP64, 8),
  /** Two's complement 32-bit integer. */
  INT32(DataType.DATA_TYPE_INT32, 4),
  /** Two's complement 64-bit integer. */
  INT64(DataType.DATA_TYPE_INT64, 8),
  /** bfloat16: the upper 16 bits of a binary32 (sent as its 16-bit patterns). */
  BF16(DataType.DATA_TYPE_BF16, 2);

  private final DataType proto;
  private final int itemSize;

  DType(DataType proto, int itemSize) {
    this.proto = proto;
    this.itemSize = itemSize;
  }

  /** The wire enum value. */
  public DataType proto() {
    return proto;
  }

  /** Bytes per element. */
  public int itemSize() {
    return itemSize;
  }

  /** The DType of a wire enum value; IllegalArgumentException for UNSPECIFIED or unknown. */
  public static DType of(DataType proto) {
    for (DType d : values()) {
      if (d.proto == proto) {
        return d;
      }
    }
    throw new IllegalArgumentException("unknown dtype " + proto);
  }
}
