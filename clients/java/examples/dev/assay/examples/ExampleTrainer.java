package dev.assay.examples;

import dev.assay.client.AssayClient;
import dev.assay.client.AssayException;
import dev.assay.client.ClientOptions;
import dev.assay.client.Pool;
import dev.assay.client.SelectRequest;
import dev.assay.client.Selection;
import dev.assay.client.Tensor;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;

/**
 * The active-learning round loop of a Java trainer against Assay: the code to copy.
 *
 * <p>One pool lives through every round. Its arrays go up once: the features, which never change
 * ("embeddings"), and the first model's class probabilities ("probs"). The seed labels go up once
 * too. Then each round:
 *
 * <ol>
 *   <li>Select: Assay picks the next batch from the pool's current version; labeled items are
 *       never picked again, so nothing is excluded by hand;
 *   <li>Label: only the new batch's labels are sent, the earlier ones stay in the pool;
 *   <li>retrain on every label so far and predict the whole pool again;
 *   <li>Replace: the new probs take the place of the old ones for all N items in one streamed
 *       call; the pool gets a new version, which the next Select reports.
 * </ol>
 *
 * <p>The model stands in for yours: a nearest-centroid classifier over synthetic embeddings,
 * where "retraining" is taking the class means of the labeled items. The run checks what the
 * loop promises and exits 1 otherwise: each Select answers from the version the last call left
 * (so versions increase round by round), never picks an item labeled before, and the pool keeps
 * every label sent. The pool is deleted at the end.
 *
 * <pre>
 * java -cp "build/assay-client-0.1.0.jar:build/example-classes:$(cat build/classpath.txt)" \
 *     dev.assay.examples.ExampleTrainer --target 127.0.0.1:50051 --rounds 5
 * </pre>
 */
public final class ExampleTrainer {
  static final int D = 16;
  static final int CLASSES = 4;
  static final String POOL = "example-trainer-java";

  public static void main(String[] args) {
    Map<String, String> flags = new LinkedHashMap<>();
    flags.put("target", env("ASSAY_TARGET", "127.0.0.1:50051"));
    flags.put("rounds", "5");
    flags.put("pool-size", "4000");
    flags.put("budget", "20");
    flags.put("strategy", "entropy");
    flags.put("token", env("ASSAY_TOKEN", ""));
    flags.put("tls-ca", env("ASSAY_TLS_CA", ""));
    flags.put("tls-cert", env("ASSAY_TLS_CERT", ""));
    flags.put("tls-key", env("ASSAY_TLS_KEY", ""));
    for (int i = 0; i < args.length; i++) {
      String name = args[i].replaceFirst("^--?", "");
      if (!flags.containsKey(name) || i + 1 >= args.length) {
        System.err.println("usage: ExampleTrainer [--" + String.join(" V] [--", flags.keySet()) + " V]");
        System.exit(2);
      }
      flags.put(name, args[++i]);
    }
    try {
      run(flags);
    } catch (AssayException e) {
      System.err.println(e.getMessage() + (e.field().isEmpty() ? "" : " (field " + e.field() + ")"));
      System.exit(1);
    } catch (IllegalStateException e) {
      System.err.println(e.getMessage());
      System.exit(1);
    }
  }

  static String env(String name, String fallback) {
    String v = System.getenv(name);
    return v == null || v.isEmpty() ? fallback : v;
  }

  static Path pathOrNull(String s) {
    return s.isEmpty() ? null : Path.of(s);
  }

  static void run(Map<String, String> flags) {
    int rounds = Integer.parseInt(flags.get("rounds"));
    int n = Integer.parseInt(flags.get("pool-size"));
    long budget = Long.parseLong(flags.get("budget"));
    String strategy = flags.get("strategy");
    ClientOptions opts = new ClientOptions().token(flags.get("token"));
    if (!flags.get("tls-ca").isEmpty()) {
      opts.tls(Path.of(flags.get("tls-ca")), pathOrNull(flags.get("tls-cert")),
          pathOrNull(flags.get("tls-key")));
    }

    // Synthetic data: N items around the class centers; truth[i] is what a labeler says.
    Random rng = new Random(7);
    float[][] centers = new float[CLASSES][D];
    for (float[] center : centers) {
      for (int j = 0; j < D; j++) {
        center[j] = (float) (rng.nextGaussian() * 0.6);
      }
    }
    float[] emb = new float[n * D];
    long[] truth = new long[n];
    for (int i = 0; i < n; i++) {
      truth[i] = i % CLASSES;
      for (int j = 0; j < D; j++) {
        emb[i * D + j] = centers[(int) truth[i]][j] + (float) rng.nextGaussian();
      }
    }
    List<Long> labeled = new ArrayList<>(List.of(0L, 1L, 2L, 3L)); // seed set: one per class
    boolean[] isLabeled = new boolean[n];
    labeled.forEach(i -> isLabeled[i.intValue()] = true);

    try (AssayClient c = new AssayClient(flags.get("target"), opts)) {
      try {
        c.deletePool(POOL); // a leftover of an interrupted run
      } catch (AssayException e) {
        if (!e.reason().equals("POOL_NOT_FOUND")) {
          throw e;
        }
      }
      // Once: the pool, its features and the first model's outputs, the seed labels.
      float[] probs = new float[n * CLASSES];
      double acc = retrainAndPredict(emb, truth, labeled, probs);
      c.createPool(POOL);
      Map<String, Tensor> arrays = new LinkedHashMap<>();
      arrays.put("embeddings", Tensor.f32(emb, n, D));
      arrays.put("probs", Tensor.f32(probs, n, CLASSES));
      c.append(POOL, arrays, 64 << 10, "");
      long[] seed = toArray(labeled);
      Pool p = c.label(POOL, seed, labelsOf(truth, seed));
      long version = p.version();
      long lastVersion = -1;

      for (int round = 0; round < rounds; round++) {
        // 1. Select from the pool: no arrays travel, the server uses what it holds.
        Selection sel = c.select(new SelectRequest(strategy, budget).pool(POOL).seed(1234));
        if (sel.poolVersion() != version || sel.poolVersion() <= lastVersion) {
          throw new IllegalStateException("round " + round + ": the select used pool version "
              + sel.poolVersion() + ", not " + version);
        }
        lastVersion = sel.poolVersion();
        for (long i : sel.indices()) {
          if (i < 0 || i >= n || isLabeled[(int) i]) {
            throw new IllegalStateException(
                "round " + round + ": item " + i + " was selected although labeled");
          }
          isLabeled[(int) i] = true;
        }
        System.out.printf("round %d: pool version %d, accuracy %.3f with %d labels; "
            + "selected %d (best %d)%n", round, sel.poolVersion(), acc, labeled.size(),
            sel.indices().length, sel.indices()[0]);

        // 2. Label the new batch only; the pool keeps the earlier labels.
        p = c.label(POOL, sel.indices(), labelsOf(truth, sel.indices()));
        for (long i : sel.indices()) {
          labeled.add(i);
        }
        if (p.labeledCount() != labeled.size()) {
          throw new IllegalStateException(
              "the pool holds " + p.labeledCount() + " labels, not " + labeled.size());
        }

        // 3. Retrain on every label so far; predict the whole pool.
        acc = retrainAndPredict(emb, truth, labeled, probs);

        // 4. Replace the model's outputs for all N items (streamed in chunks); the embeddings
        //    and the labels stay as they are.
        p = c.replace(POOL, Map.of("probs", Tensor.f32(probs, n, CLASSES)), 64 << 10, "");
        version = p.version();
      }
      System.out.printf("final: accuracy %.3f with %d labels%n", acc, labeled.size());
      c.deletePool(POOL);
    }
  }

  static long[] toArray(List<Long> xs) {
    return xs.stream().mapToLong(Long::longValue).toArray();
  }

  static long[] labelsOf(long[] truth, long[] items) {
    long[] out = new long[items.length];
    for (int i = 0; i < items.length; i++) {
      out[i] = truth[(int) items[i]];
    }
    return out;
  }

  /**
   * The stand-in model: fits class means on the labeled items, then writes softmax probabilities
   * of negative squared distances for every item. Returns the accuracy.
   */
  static double retrainAndPredict(float[] emb, long[] truth, List<Long> labeled, float[] probs) {
    double[][] mean = new double[CLASSES][D];
    int[] count = new int[CLASSES];
    for (long i : labeled) {
      int k = (int) truth[(int) i];
      count[k]++;
      for (int j = 0; j < D; j++) {
        mean[k][j] += emb[(int) i * D + j];
      }
    }
    int n = truth.length;
    int correct = 0;
    double[] logits = new double[CLASSES];
    for (int i = 0; i < n; i++) {
      double top = Double.NEGATIVE_INFINITY;
      for (int k = 0; k < CLASSES; k++) {
        logits[k] = Double.NEGATIVE_INFINITY;
        if (count[k] > 0) {
          double dist = 0;
          for (int j = 0; j < D; j++) {
            double diff = emb[i * D + j] - mean[k][j] / count[k];
            dist += diff * diff;
          }
          logits[k] = -2 * dist / D;
        }
        top = Math.max(top, logits[k]);
      }
      double z = 0;
      for (int k = 0; k < CLASSES; k++) {
        z += Math.exp(logits[k] - top);
      }
      int best = 0;
      for (int k = 0; k < CLASSES; k++) {
        probs[i * CLASSES + k] = (float) (Math.exp(logits[k] - top) / z);
        if (probs[i * CLASSES + k] > probs[i * CLASSES + best]) {
          best = k;
        }
      }
      if (best == truth[i]) {
        correct++;
      }
    }
    return (double) correct / n;
  }
}
