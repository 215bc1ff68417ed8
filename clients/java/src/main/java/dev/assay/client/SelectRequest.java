package dev.assay.client;

import dev.assay.v1.Inputs;
import dev.assay.v1.ParamValue;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A Select: {@code budget} items by {@code strategy}, from inline inputs or a stored pool.
 *
 * <pre>{@code
 * new SelectRequest("entropy", 10).input("probs", Tensor.f32(p, n, classes));
 * new SelectRequest("badge", 20).pool("loop").seed(7).param("k", 5);
 * }</pre>
 */
public final class SelectRequest {
  /** Prefix of the named raw inputs of a model with several graph inputs. */
  public static final String NAMED_MODEL_INPUTS = "model_inputs.";

  private final String strategy;
  private final long budget;
  private final Map<String, Tensor> inputs = new LinkedHashMap<>();
  private String poolId = "";
  private final Map<String, Object> params = new LinkedHashMap<>();
  private Long seed;
  private long[] exclude = new long[0];
  private final List<String> models = new ArrayList<>();
  private int mcSamples;
  private int batchSize;
  private String requestId = "";

  /** A request for {@code budget} items by {@code strategy} (see listStrategies). */
  public SelectRequest(String strategy, long budget) {
    this.strategy = strategy;
    this.budget = budget;
  }

  /**
   * An inline input by role: "probs", "samples", "embeddings", "labeled_embeddings", "scores",
   * "loss", "discriminator", "predictions", "labeled_probs", "labels", "model_inputs",
   * "target_samples" (inline only), or "model_inputs.&lt;name&gt;" for a model with several
   * graph inputs.
   */
  public SelectRequest input(String role, Tensor t) {
    inputs.put(role, t);
    return this;
  }

  /** Select from a stored pool instead of inline inputs; its labeled items are never picked. */
  public SelectRequest pool(String id) {
    this.poolId = id;
    return this;
  }

  /** A strategy parameter: Double/Float, Integer/Long, String or Boolean. */
  public SelectRequest param(String name, Object value) {
    params.put(name, value);
    return this;
  }

  /** The seed of the strategy's randomness (unsigned 64-bit); unset: the server draws one. */
  public SelectRequest seed(long seed) {
    this.seed = seed;
    return this;
  }

  /** Item indices never to select. */
  public SelectRequest exclude(long... indices) {
    this.exclude = indices.clone();
    return this;
  }

  /** Registered models to run over the raw model inputs; several form a committee. */
  public SelectRequest models(String... ids) {
    models.addAll(List.of(ids));
    return this;
  }

  /** MC dropout: run each model this many times with its Dropout nodes sampling. */
  public SelectRequest mcSamples(int n) {
    this.mcSamples = n;
    return this;
  }

  /** Items per inference batch (0: the server's choice). */
  public SelectRequest batchSize(int n) {
    this.batchSize = n;
    return this;
  }

  /** The idempotency key; a random UUID is used when none is set. */
  public SelectRequest requestId(String id) {
    this.requestId = id;
    return this;
  }

  static ParamValue paramValue(String name, Object v) {
    ParamValue.Builder p = ParamValue.newBuilder();
    if (v instanceof Double || v instanceof Float) {
      return p.setDoubleValue(((Number) v).doubleValue()).build();
    } else if (v instanceof Integer || v instanceof Long || v instanceof Short) {
      return p.setIntValue(((Number) v).longValue()).build();
    } else if (v instanceof String s) {
      return p.setStringValue(s).build();
    } else if (v instanceof Boolean b) {
      return p.setBoolValue(b).build();
    }
    throw new IllegalArgumentException("params[" + name + "] has unsupported type "
        + (v == null ? "null" : v.getClass().getName()));
  }

  private static void setInput(Inputs.Builder in, String role, dev.assay.v1.Tensor t) {
    switch (role) {
      case "probs" -> in.setProbs(t);
      case "samples" -> in.setSamples(t);
      case "embeddings" -> in.setEmbeddings(t);
      case "labeled_embeddings" -> in.setLabeledEmbeddings(t);
      case "scores" -> in.setScores(t);
      case "loss" -> in.setLoss(t);
      case "discriminator" -> in.setDiscriminator(t);
      case "predictions" -> in.setPredictions(t);
      case "labeled_probs" -> in.setLabeledProbs(t);
      case "labels" -> in.setLabels(t);
      case "model_inputs" -> in.setModelInputs(t);
      case "target_samples" -> in.setTargetSamples(t);
      default -> {
        String name = role.startsWith(NAMED_MODEL_INPUTS)
            ? role.substring(NAMED_MODEL_INPUTS.length()) : "";
        if (name.isEmpty()) {
          throw new IllegalArgumentException("unknown input role " + role);
        }
        in.putNamedModelInputs(name, t);
      }
    }
  }

  /** The wire message (with a fresh UUID as request id when none was set). */
  public dev.assay.v1.SelectRequest toProto() {
    dev.assay.v1.SelectRequest.Builder r = dev.assay.v1.SelectRequest.newBuilder()
        .setStrategy(strategy)
        .setBudget(budget)
        .setRequestId(requestId.isEmpty() ? AssayClient.newRequestId() : requestId)
        .addAllModelIds(models)
        .setMcSamples(mcSamples)
        .setBatchSize(batchSize);
    for (long i : exclude) {
      r.addExcludeIndices(i);
    }
    if (seed != null) {
      r.setSeed(seed);
    }
    params.forEach((k, v) -> r.putParams(k, paramValue(k, v)));
    if (!poolId.isEmpty()) {
      r.setPoolId(poolId);
    } else {
      Inputs.Builder in = Inputs.newBuilder();
      inputs.forEach((role, t) -> setInput(in, role, t.toProto()));
      r.setInputs(in);
    }
    return r.build();
  }
}
