package com.example.consumer;

import dev.assay.client.AssayClient;
import dev.assay.client.AssayException;
import dev.assay.client.ClientOptions;
import dev.assay.client.SelectRequest;
import dev.assay.client.Selection;
import dev.assay.client.Tensor;
import java.time.Duration;
import java.util.Arrays;
import java.util.Map;

/** A program of its own that uses the installed Assay client jar: one pool, one Select. */
public final class Main {
  public static void main(String[] args) {
    String target = args.length > 0 ? args[0] : System.getenv().getOrDefault("ASSAY_TARGET",
        "127.0.0.1:50051");
    try (AssayClient c = new AssayClient(target, new ClientOptions().timeout(Duration.ofSeconds(60)))) {
      System.out.println("strategies: " + c.listStrategies().size());
      String pool = "consumer-" + AssayClient.newRequestId().substring(0, 8);
      c.createPool(pool);
      try {
        float[] probs = {0.9f, 0.1f, 0.5f, 0.5f, 0.6f, 0.4f, 0.99f, 0.01f};
        c.append(pool, Map.of("probs", Tensor.f32(probs, 4, 2)));
        Selection s = c.select(new SelectRequest("entropy", 2).pool(pool));
        System.out.println("selected " + Arrays.toString(s.indices()) + " at pool version "
            + s.poolVersion());
      } finally {
        c.deletePool(pool);
      }
      c.getPool(pool);
    } catch (AssayException e) {
      // The pool is gone: NOT_FOUND, with the server's reason.
      System.out.println("after delete: " + e.codeName() + " " + e.reason());
    }
  }
}
