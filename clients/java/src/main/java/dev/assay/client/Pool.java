package dev.assay.client;

import java.util.List;

/**
 * A pool's metadata.
 *
 * @param poolId the pool id
 * @param itemCount number of items (the N axis of every array)
 * @param labeledCount number of items marked labeled
 * @param version increases on every committed change (append, replace, label, epoch)
 * @param arrays the pool's arrays
 * @param sizeBytes total bytes of stored array data
 * @param shards number of shards (0 for a pool held by one server)
 */
public record Pool(
    String poolId,
    long itemCount,
    long labeledCount,
    long version,
    List<ArrayInfo> arrays,
    long sizeBytes,
    int shards) {

  static Pool of(dev.assay.v1.Pool p) {
    List<ArrayInfo> arrays =
        p.getArraysList().stream()
            .map(a -> new ArrayInfo(a.getName(), DType.of(a.getDtype()),
                a.getShapeList().stream().mapToLong(Long::longValue).toArray()))
            .toList();
    return new Pool(p.getPoolId(), p.getItemCount(), p.getLabeledCount(), p.getVersion(), arrays,
        p.getSizeBytes(), p.getShards());
  }
}
