package dev.assay.client;

import java.util.List;
import java.util.Map;

/**
 * A Select answer.
 *
 * @param indices selected item indices, best first
 * @param scores score of each selected item (empty for strategies that build the batch jointly)
 * @param strategy the strategy that ran
 * @param backend the compute backend that ran ("numpy", "numba-cpu", "faiss-cpu", ...)
 * @param seed the seed used (the request's, or the one the server drew); unsigned 64-bit
 * @param poolVersion the pool version the selection was computed on (0 for inline inputs)
 * @param requestId echo of the request id
 * @param metrics strategy-specific figures
 * @param pseudoLabelIndices items proposed for pseudo-labeling (CEAL)
 * @param pseudoLabels the pseudo-label of each of them
 * @param computeSeconds server-side compute time of the strategy
 * @param executionProviders per registered model named in the request, the onnxruntime
 *     execution provider that ran it
 */
public record Selection(
    long[] indices,
    double[] scores,
    String strategy,
    String backend,
    long seed,
    long poolVersion,
    String requestId,
    Map<String, Double> metrics,
    long[] pseudoLabelIndices,
    long[] pseudoLabels,
    double computeSeconds,
    List<String> executionProviders) {

  static Selection of(dev.assay.v1.SelectResponse r) {
    return new Selection(
        r.getIndicesList().stream().mapToLong(Long::longValue).toArray(),
        r.getScoresList().stream().mapToDouble(Double::doubleValue).toArray(),
        r.getStrategy(),
        r.getBackend(),
        r.getSeed(),
        r.getPoolVersion(),
        r.getRequestId(),
        Map.copyOf(r.getMetricsMap()),
        r.getPseudoLabelIndicesList().stream().mapToLong(Long::longValue).toArray(),
        r.getPseudoLabelsList().stream().mapToLong(Long::longValue).toArray(),
        r.getComputeSeconds(),
        List.copyOf(r.getExecutionProvidersList()));
  }
}
