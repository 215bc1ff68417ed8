package dev.assay.client;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import com.google.protobuf.Any;
import dev.assay.client.rpc.BadRequest;
import dev.assay.client.rpc.ErrorInfo;
import dev.assay.client.rpc.RetryInfo;
import dev.assay.v1.AppendPoolItemsRequest;
import dev.assay.v1.AppendPoolItemsResponse;
import dev.assay.v1.AssayServiceGrpc;
import dev.assay.v1.CreatePoolRequest;
import dev.assay.v1.CreatePoolResponse;
import dev.assay.v1.ListStrategiesRequest;
import dev.assay.v1.ListStrategiesResponse;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.Status;
import io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The Java client's tests, a plain program (no test framework: the build needs javac alone).
 *
 * <p>Without a server: tensor encoding, and against an in-process fake server, the retries of the
 * bundled service config, one deadline across attempts, and the decoding of the rich error
 * status. With {@code ASSAY_TARGET=host:port}: every case of tests/vectors/select_vectors.json
 * ({@code ASSAY_VECTORS} overrides the path), the model vectors when {@code ASSAY_MODEL_VECTORS}
 * names their directory, and the client's calls against the live server (only these with
 * {@code --client-checks}). {@code ASSAY_TOKEN} and
 * {@code ASSAY_TLS_CA}/{@code _CERT}/{@code _KEY} configure auth and TLS. Exits 1 on any
 * failure.
 */
public final class ClientChecks {
  private int passed;
  private final List<String> failures = new ArrayList<>();

  interface Check {
    void run() throws Exception;
  }

  private void check(String name, Check c) {
    try {
      c.run();
      passed++;
      System.out.println("ok   " + name);
    } catch (Throwable t) {
      failures.add(name);
      System.out.println("FAIL " + name + ": " + t);
    }
  }

  static void expect(boolean ok, String what) {
    if (!ok) {
      throw new AssertionError(what);
    }
  }

  public static void main(String[] args) throws Exception {
    // --client-checks: the client's own checks only, without the vectors.
    boolean vectors = !List.of(args).contains("--client-checks");
    ClientChecks t = new ClientChecks();
    t.offline();
    String target = System.getenv().getOrDefault("ASSAY_TARGET", "");
    int vectorFailures = 0;
    if (target.isEmpty()) {
      System.out.println("ASSAY_TARGET is not set: the checks against a server are skipped");
    } else {
      // Long enough for a first Select that compiles its kernel on a busy machine; a warm
      // server answers the vectors in milliseconds.
      try (AssayClient c = new AssayClient(target, options(Duration.ofSeconds(300)))) {
        vectorFailures = vectors ? t.vectors(c) : 0;
        String models = System.getenv().getOrDefault("ASSAY_MODEL_VECTORS", "");
        if (vectors && !models.isEmpty()) {
          t.check("model vectors", () -> modelVectors(c, Path.of(models)));
        }
        t.live(c, target);
      }
    }
    System.out.printf("checks: %d passed, %d failed%n", t.passed, t.failures.size());
    if (!t.failures.isEmpty() || vectorFailures > 0) {
      System.exit(1);
    }
  }

  static ClientOptions options(Duration timeout) {
    ClientOptions o = new ClientOptions().timeout(timeout)
        .token(System.getenv().getOrDefault("ASSAY_TOKEN", ""));
    String ca = System.getenv().getOrDefault("ASSAY_TLS_CA", "");
    if (!ca.isEmpty()) {
      o.tls(Path.of(ca), Path.of(System.getenv("ASSAY_TLS_CERT")),
          Path.of(System.getenv("ASSAY_TLS_KEY")));
      o.serverName(System.getenv().getOrDefault("ASSAY_TLS_SERVER_NAME", ""));
    }
    return o;
  }

  // -- without a server -----------------------------------------------------------------------

  private void offline() throws IOException, InterruptedException {
    check("tensors are little-endian, row-major", () -> {
      Tensor t = Tensor.f32(new float[] {1f, -2.5f, 3f, 0.25f, 5f, 6f}, 2, 3);
      ByteBuffer b = t.data().asReadOnlyByteBuffer().order(ByteOrder.LITTLE_ENDIAN);
      expect(b.getFloat(4) == -2.5f && t.data().byteAt(0) == 0 && t.data().byteAt(3) == 0x3f,
          "fp32 bytes");
      expect(Tensor.i64(new long[] {1, 258}, 2).data().byteAt(9) == 1, "int64 bytes");
      expect(t.toProto().getShapeList().equals(List.of(2L, 3L)), "shape");
      try {
        Tensor.f32(new float[5], 2, 3);
        throw new AssertionError("5 values accepted for [2, 3]");
      } catch (IllegalArgumentException expected) {
        // refused
      }
    });
    check("bf16 rounds to nearest even", () -> {
      float[] in = {1f, 1.00390625f, 1.01171875f, Float.NaN, Float.POSITIVE_INFINITY, -2f};
      ByteBuffer b = Tensor.bf16(in, 6).data().asReadOnlyByteBuffer().order(ByteOrder.LITTLE_ENDIAN);
      short[] want = {0x3f80, 0x3f80, 0x3f82, 0, 0x7f80, (short) 0xc000};
      for (int i = 0; i < in.length; i++) {
        short got = b.getShort(2 * i);
        expect(i == 3 ? (got & 0x7f80) == 0x7f80 && (got & 0x7f) != 0 : got == want[i],
            "bf16 of " + in[i] + ": " + Integer.toHexString(got & 0xffff));
      }
    });
    check("the bundled service config retries UNAVAILABLE on Select", () -> {
      Map<String, ?> cfg = AssayClient.serviceConfig();
      String s = cfg.toString();
      expect(s.contains("retryPolicy") && s.contains("UNAVAILABLE") && s.contains("Select"), s);
    });
    Fake fake = new Fake();
    Server server = NettyServerBuilder
        .forAddress(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0))
        .addService(fake).build().start();
    String target = "127.0.0.1:" + server.getPort();
    try (AssayClient c = new AssayClient(target, new ClientOptions().timeout(Duration.ofSeconds(10)))) {
      check("UNAVAILABLE is retried by the service config, then answered", () -> {
        fake.unavailableFirst.set(2);
        fake.calls.set(0);
        List<StrategyInfo> all = c.listStrategies();
        expect(fake.calls.get() == 3 && all.size() == 1, "attempts " + fake.calls.get());
      });
      check("CreatePool is not retried (not safe to send twice)", () -> {
        fake.unavailableFirst.set(2);
        fake.calls.set(0);
        try {
          c.createPool("p");
          throw new AssertionError("no error");
        } catch (AssayException e) {
          expect(e.code() == Status.Code.UNAVAILABLE && fake.calls.get() == 1,
              e + " after " + fake.calls.get() + " attempts");
        }
        fake.unavailableFirst.set(0);
      });
      check("one deadline covers every attempt", () -> {
        fake.unavailableFirst.set(1000);
        fake.delayMillis = 250;
        fake.calls.set(0);
        long start = System.nanoTime();
        try {
          c.withTimeout(Duration.ofMillis(600)).listStrategies();
          throw new AssertionError("no error");
        } catch (AssayException e) {
          double seconds = (System.nanoTime() - start) / 1e9;
          // 4 attempts of 250 ms each cannot fit: the call ends at its one deadline.
          expect(e.code() == Status.Code.DEADLINE_EXCEEDED, e.toString());
          expect(seconds < 5 && fake.calls.get() >= 1 && fake.calls.get() <= 4,
              seconds + " s, " + fake.calls.get() + " attempts");
        } finally {
          fake.unavailableFirst.set(0);
          fake.delayMillis = 0;
        }
      });
      check("RESOURCE_EXHAUSTED with the server's pushback is retried, then answered", () -> {
        fake.exhaustedFirst.set(2);
        fake.answerSelect = true;
        fake.calls.set(0);
        Selection s = c.select(new SelectRequest("entropy", 1)
            .input("probs", Tensor.f32(new float[] {1f}, 1, 1)));
        expect(fake.calls.get() == 3 && s.indices().length == 1, "attempts " + fake.calls.get());
      });
      check("reason, field and retry delay come from the status details", () -> {
        fake.calls.set(0);
        try {
          c.select(new SelectRequest("entropy", 1).input("probs", Tensor.f32(new float[] {1f}, 1, 1)));
          throw new AssertionError("no error");
        } catch (AssayException e) {
          expect(e.code() == Status.Code.RESOURCE_EXHAUSTED && e.reason().equals("TOO_MANY_SELECTS")
              && e.field().equals("budget") && Duration.ofMillis(1500).equals(e.retryDelay())
              && e.serverMessage().equals("busy"), e + " " + e.field() + " " + e.retryDelay());
          // A pushback of -1 (a final refusal) is not retried.
          expect(fake.calls.get() == 1, "attempts " + fake.calls.get());
        }
      });
      check("a stream the server ends early reports the server's status", () -> {
        try {
          c.append("p", Map.of("probs", Tensor.f32(new float[1 << 20], 1 << 18, 4)), 1024, "");
          throw new AssertionError("no error");
        } catch (AssayException e) {
          expect(e.code() == Status.Code.NOT_FOUND && e.reason().equals("POOL_NOT_FOUND")
              && e.field().equals("header.pool_id"), e + " field " + e.field());
        }
      });
    } finally {
      server.shutdownNow().awaitTermination();
    }
    check("a dead server is UNAVAILABLE after the retries", () -> {
      try (AssayClient dead = new AssayClient("127.0.0.1:1",
          new ClientOptions().timeout(Duration.ofSeconds(5)))) {
        dead.listStrategies();
        throw new AssertionError("no error");
      } catch (AssayException e) {
        expect(e.code() == Status.Code.UNAVAILABLE && e.reason().isEmpty(), e.toString());
      }
    });
  }

  static Metadata details(Status status, String reason, String field, Any... more) {
    ErrorInfo info = ErrorInfo.newBuilder().setDomain("assay.v1").setReason(reason)
        .putMetadata("field", field).build();
    dev.assay.client.rpc.Status.Builder rich = dev.assay.client.rpc.Status.newBuilder()
        .setCode(status.getCode().value()).setMessage(status.getDescription())
        .addDetails(Any.pack(info));
    for (Any a : more) {
      rich.addDetails(a);
    }
    Metadata m = new Metadata();
    m.put(AssayException.DETAILS_KEY, rich.build().toByteArray());
    return m;
  }

  /** A fake server: UNAVAILABLE for the first calls, then answers; errors with details. */
  static final class Fake extends AssayServiceGrpc.AssayServiceImplBase {
    final AtomicInteger unavailableFirst = new AtomicInteger();
    final AtomicInteger calls = new AtomicInteger();
    /** Select calls refused with RESOURCE_EXHAUSTED and a 50 ms pushback before one answers. */
    final AtomicInteger exhaustedFirst = new AtomicInteger();
    /** The next Select that is not refused by exhaustedFirst answers. */
    volatile boolean answerSelect;
    volatile long delayMillis;

    private boolean refuse(StreamObserver<?> out) {
      calls.incrementAndGet();
      try {
        Thread.sleep(delayMillis);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
      if (unavailableFirst.getAndDecrement() > 0) {
        out.onError(Status.UNAVAILABLE.withDescription("restarting").asRuntimeException());
        return true;
      }
      return false;
    }

    @Override
    public void listStrategies(ListStrategiesRequest req, StreamObserver<ListStrategiesResponse> out) {
      if (!refuse(out)) {
        out.onNext(ListStrategiesResponse.newBuilder()
            .addStrategies(dev.assay.v1.StrategyInfo.newBuilder().setName("entropy")).build());
        out.onCompleted();
      }
    }

    @Override
    public void createPool(CreatePoolRequest req, StreamObserver<CreatePoolResponse> out) {
      if (!refuse(out)) {
        out.onNext(CreatePoolResponse.getDefaultInstance());
        out.onCompleted();
      }
    }

    @Override
    public void select(dev.assay.v1.SelectRequest req,
        StreamObserver<dev.assay.v1.SelectResponse> out) {
      calls.incrementAndGet();
      Metadata.Key<String> pushback =
          Metadata.Key.of("grpc-retry-pushback-ms", Metadata.ASCII_STRING_MARSHALLER);
      Status s = Status.RESOURCE_EXHAUSTED.withDescription("busy");
      if (exhaustedFirst.getAndUpdate(x -> Math.max(0, x - 1)) > 0) {
        Metadata m = new Metadata();
        m.put(pushback, "50");
        out.onError(s.asRuntimeException(m));
        return;
      }
      if (answerSelect) {
        answerSelect = false;
        out.onNext(dev.assay.v1.SelectResponse.newBuilder().addIndices(0).build());
        out.onCompleted();
        return;
      }
      Any retry = Any.pack(RetryInfo.newBuilder().setRetryDelay(
          com.google.protobuf.Duration.newBuilder().setSeconds(1).setNanos(500_000_000)).build());
      Any bad = Any.pack(BadRequest.newBuilder().addFieldViolations(
          BadRequest.FieldViolation.newBuilder().setField("budget")).build());
      Metadata trailers = details(s, "TOO_MANY_SELECTS", "budget", retry, bad);
      trailers.put(pushback, "-1");
      out.onError(s.asRuntimeException(trailers));
    }

    @Override
    public StreamObserver<AppendPoolItemsRequest> appendPoolItems(
        StreamObserver<AppendPoolItemsResponse> out) {
      return new StreamObserver<>() {
        @Override
        public void onNext(AppendPoolItemsRequest m) {
          if (m.hasHeader()) {
            Status s = Status.NOT_FOUND.withDescription("no pool " + m.getHeader().getPoolId());
            out.onError(s.asRuntimeException(details(s, "POOL_NOT_FOUND", "header.pool_id")));
          }
        }

        @Override
        public void onError(Throwable t) {}

        @Override
        public void onCompleted() {}
      };
    }
  }

  // -- the conformance vectors ----------------------------------------------------------------

  static Tensor tensor(JsonObject v) {
    long[] shape = longs(v.getAsJsonArray("shape"));
    String dtype = v.get("dtype").getAsString();
    if (dtype.equals("FP16") || dtype.equals("BF16")) {
      JsonArray bits = v.getAsJsonArray("bits");
      short[] b = new short[bits.size()];
      for (int i = 0; i < b.length; i++) {
        b[i] = (short) bits.get(i).getAsInt();
      }
      return dtype.equals("FP16") ? Tensor.f16Bits(b, shape) : Tensor.bf16Bits(b, shape);
    }
    JsonArray values = v.getAsJsonArray(v.has("values") ? "values" : "data");
    int n = values.size();
    switch (dtype) {
      case "FP32", "float32" -> {
        float[] f = new float[n];
        for (int i = 0; i < n; i++) {
          f[i] = (float) number(values.get(i));
        }
        return Tensor.f32(f, shape);
      }
      case "FP64", "float64" -> {
        double[] f = new double[n];
        for (int i = 0; i < n; i++) {
          f[i] = number(values.get(i));
        }
        return Tensor.f64(f, shape);
      }
      case "INT32", "int32" -> {
        int[] f = new int[n];
        for (int i = 0; i < n; i++) {
          f[i] = values.get(i).getAsInt();
        }
        return Tensor.i32(f, shape);
      }
      case "INT64", "int64" -> {
        return Tensor.i64(longs(values), shape);
      }
      default -> throw new IllegalArgumentException("unknown dtype " + dtype);
    }
  }

  /** A JSON number, or "Infinity", "-Infinity", "NaN" (JSON has no such numbers). */
  static double number(JsonElement e) {
    if (e.getAsJsonPrimitive().isString()) {
      return switch (e.getAsString()) {
        case "Infinity" -> Double.POSITIVE_INFINITY;
        case "-Infinity" -> Double.NEGATIVE_INFINITY;
        default -> Double.NaN;
      };
    }
    return e.getAsDouble();
  }

  static long[] longs(JsonArray a) {
    long[] out = new long[a.size()];
    for (int i = 0; i < out.length; i++) {
      out[i] = a.get(i).getAsLong();
    }
    return out;
  }

  static Map<String, Tensor> arrays(JsonObject roles) {
    Map<String, Tensor> out = new LinkedHashMap<>();
    for (Map.Entry<String, JsonElement> e : roles.entrySet()) {
      out.put(e.getKey(), tensor(e.getValue().getAsJsonObject()));
    }
    return out;
  }

  static void runCase(AssayClient c, JsonObject vc) {
    SelectRequest req = new SelectRequest(vc.get("strategy").getAsString(),
        vc.get("budget").getAsLong());
    if (vc.has("seed")) {
      req.seed(vc.get("seed").getAsLong());
    }
    if (vc.has("exclude")) {
      req.exclude(longs(vc.getAsJsonArray("exclude")));
    }
    if (vc.has("params")) {
      for (Map.Entry<String, JsonElement> p : vc.getAsJsonObject("params").entrySet()) {
        for (Map.Entry<String, JsonElement> kv : p.getValue().getAsJsonObject().entrySet()) {
          JsonElement x = kv.getValue();
          req.param(p.getKey(), switch (kv.getKey()) {
            case "int" -> x.getAsLong();
            case "double" -> x.getAsDouble();
            case "bool" -> x.getAsBoolean();
            default -> x.getAsString();
          });
        }
      }
    }
    String pool = null;
    try {
      if (vc.has("pool")) {
        JsonObject p = vc.getAsJsonObject("pool");
        pool = "java-" + AssayClient.newRequestId().substring(0, 12);
        c.createPool(pool);
        int chunk = p.get("chunk_bytes").getAsInt();
        for (JsonElement part : p.getAsJsonArray("appends")) {
          c.append(pool, arrays(part.getAsJsonObject()), chunk, "");
        }
        if (p.has("label") && !p.get("label").isJsonNull()) {
          JsonObject l = p.getAsJsonObject("label");
          c.label(pool, longs(l.getAsJsonArray("indices")), longs(l.getAsJsonArray("labels")));
        }
        req.pool(pool);
      } else {
        arrays(vc.getAsJsonObject("inputs")).forEach(req::input);
      }
      JsonObject want = vc.getAsJsonObject("expect");
      Selection got;
      try {
        got = c.select(req);
      } catch (AssayException e) {
        if (want.has("error")) {
          expect(e.codeName().equals(want.get("error").getAsString()),
              "expected " + want.get("error") + ", got " + e);
          return;
        }
        throw e;
      }
      expect(!want.has("error"), "expected " + want.get("error") + ", got an answer");
      long[] indices = longs(want.getAsJsonArray("indices"));
      expect(Arrays.equals(got.indices(), indices),
          "indices " + Arrays.toString(got.indices()) + ", want " + Arrays.toString(indices));
      JsonArray scores = want.getAsJsonArray("scores");
      expect(got.scores().length == scores.size(),
          got.scores().length + " scores, want " + scores.size());
      double rtol = want.get("rtol").getAsDouble();
      double atol = want.get("atol").getAsDouble();
      for (int i = 0; i < scores.size(); i++) {
        double w = number(scores.get(i));
        double g = got.scores()[i];
        boolean same = Double.isInfinite(w) || Double.isNaN(w)
            ? Double.compare(g, w) == 0 : Math.abs(g - w) <= atol + rtol * Math.abs(w);
        expect(same, "score " + i + " = " + g + ", want " + w);
      }
      if (want.has("pseudo_label_indices")) {
        expect(Arrays.equals(got.pseudoLabelIndices(), longs(want.getAsJsonArray("pseudo_label_indices")))
            && Arrays.equals(got.pseudoLabels(), longs(want.getAsJsonArray("pseudo_labels"))),
            "pseudo labels differ");
      } else {
        expect(got.pseudoLabelIndices().length == 0, "unexpected pseudo labels");
      }
    } finally {
      if (pool != null) {
        c.deletePool(pool);
      }
    }
  }

  private int vectors(AssayClient c) throws IOException {
    Path path = Path.of(System.getenv().getOrDefault("ASSAY_VECTORS",
        "../../tests/vectors/select_vectors.json"));
    JsonArray cases = JsonParser.parseString(Files.readString(path)).getAsJsonObject()
        .getAsJsonArray("cases");
    int failed = 0;
    for (JsonElement e : cases) {
      JsonObject vc = e.getAsJsonObject();
      try {
        runCase(c, vc);
      } catch (Throwable t) {
        failed++;
        System.out.println("FAIL vector " + vc.get("name").getAsString() + ": " + t);
      }
    }
    System.out.printf("conformance: %d passed, %d failed%n", cases.size() - failed, failed);
    return failed;
  }

  static void modelVectors(AssayClient c, Path dir) throws IOException {
    JsonObject v = JsonParser.parseString(Files.readString(dir.resolve("model.json")))
        .getAsJsonObject();
    Map<String, String> outputs = new LinkedHashMap<>();
    v.getAsJsonObject("outputs").entrySet()
        .forEach(e -> outputs.put(e.getKey(), e.getValue().getAsString()));
    Map<String, Tensor> raw = new LinkedHashMap<>();
    v.getAsJsonObject("inputs").entrySet().forEach(e ->
        raw.put(SelectRequest.NAMED_MODEL_INPUTS + e.getKey(), tensor(e.getValue().getAsJsonObject())));
    String id = "text-java";
    String pool = "texts-java";
    Model m = c.registerModel(id, dir.resolve(v.get("model_file").getAsString()), outputs);
    try {
      expect(m.inputs().stream().map(Model.Input::array).toList().equals(List.copyOf(raw.keySet())),
          "model inputs " + m.inputs());
      expect(c.getModel(id).sha256().equals(m.sha256()), "getModel");
      expect(c.listModels().stream().anyMatch(x -> x.modelId().equals(id)), "listModels");
      c.createPool(pool);
      try {
        c.append(pool, raw);
        c.label(pool, longs(v.getAsJsonArray("labeled")), longs(v.getAsJsonArray("labels")));
        for (JsonElement ce : v.getAsJsonArray("cases")) {
          JsonObject k = ce.getAsJsonObject();
          SelectRequest req = new SelectRequest(k.get("strategy").getAsString(),
              k.get("budget").getAsLong()).models(id).mcSamples(k.get("mc_samples").getAsInt())
              .seed(k.get("seed").getAsLong()).batchSize(k.get("batch_size").getAsInt());
          if (k.get("source").getAsString().equals("pool")) {
            req.pool(pool);
          } else {
            raw.forEach(req::input);
          }
          Selection got = c.select(req);
          String name = k.get("name").getAsString();
          expect(Arrays.equals(got.indices(), longs(k.getAsJsonArray("indices"))),
              name + ": indices " + Arrays.toString(got.indices()));
          double tol = k.get("tolerance").getAsDouble();
          JsonArray scores = k.getAsJsonArray("scores");
          for (int i = 0; i < scores.size(); i++) {
            double w = scores.get(i).getAsDouble();
            expect(Math.abs(got.scores()[i] - w) <= 1e-9 + tol * Math.abs(w),
                name + ": score " + i + " = " + got.scores()[i] + ", want " + w);
          }
          expect(got.executionProviders().equals(List.of(v.get("execution_provider").getAsString())),
              name + ": providers " + got.executionProviders());
        }
      } finally {
        c.deletePool(pool);
      }
    } finally {
      c.deleteModel(id);
    }
    try {
      c.getModel(id);
      throw new AssertionError("a deleted model is still there");
    } catch (AssayException e) {
      expect(e.code() == Status.Code.NOT_FOUND, e.toString());
    }
  }

  // -- against the live server ----------------------------------------------------------------

  static Tensor entropyProbs() {
    return Tensor.f32(new float[] {0.9f, 0.1f, 0.5f, 0.5f, 0.6f, 0.4f, 0.99f, 0.01f}, 4, 2);
  }

  private void live(AssayClient c, String target) {
    check("listStrategies lists entropy with its input", () -> {
      expect(c.listStrategies().stream().anyMatch(s -> s.name().equals("entropy")
          && s.requiredInputs().equals(List.of("probs")) && s.kind().equals("score")), "entropy");
    });
    check("a retried request id is answered once", () -> {
      String id = AssayClient.newRequestId();
      Selection a = c.select(new SelectRequest("entropy", 2).input("probs", entropyProbs()).requestId(id));
      Selection b = c.select(new SelectRequest("entropy", 2).input("probs", entropyProbs()).requestId(id));
      expect(Arrays.equals(a.indices(), new long[] {1, 2}) && Arrays.equals(a.indices(), b.indices())
          && a.seed() == b.seed() && b.requestId().equals(id), "retry answered differently");
      try {
        c.select(new SelectRequest("entropy", 3).input("probs", entropyProbs()).requestId(id));
        throw new AssertionError("same id, different request: no error");
      } catch (AssayException e) {
        expect(e.code() == Status.Code.FAILED_PRECONDITION && e.reason().equals("REQUEST_ID_REUSED"),
            e.toString());
      }
    });
    check("errors carry the server's reason and field", () -> {
      try {
        c.select(new SelectRequest("no-such-strategy", 1).input("probs", entropyProbs()));
        throw new AssertionError("no error");
      } catch (AssayException e) {
        expect(e.code() == Status.Code.NOT_FOUND && e.reason().equals("UNKNOWN_STRATEGY")
            && !e.field().isEmpty(), e + " field=" + e.field());
      }
      try {
        c.select(new SelectRequest("entropy", 0).input("probs", entropyProbs()));
        throw new AssertionError("no error");
      } catch (AssayException e) {
        expect(e.code() == Status.Code.INVALID_ARGUMENT && e.field().equals("budget"),
            e + " field=" + e.field());
      }
    });
    check("a call past its deadline is DEADLINE_EXCEEDED", () -> {
      Tensor big = Tensor.f32(new float[400_000 * 10], 400_000, 10);
      try {
        c.withTimeout(Duration.ofMillis(1)).select(new SelectRequest("entropy", 1).input("probs", big));
        throw new AssertionError("no error");
      } catch (AssayException e) {
        expect(e.code() == Status.Code.DEADLINE_EXCEEDED, e.toString());
      }
    });
    check("pool lifecycle: create, append, label, list, delete", () -> {
      String id = "java-life-" + AssayClient.newRequestId().substring(0, 8);
      c.createPool(id);
      float[] emb = new float[1000 * 3];
      for (int i = 0; i < emb.length; i++) {
        emb[i] = i % 17;
      }
      AppendResult r = c.append(id, Map.of("embeddings", Tensor.f32(emb, 1000, 3)), 1024, "");
      expect(r.appendedCount() == 1000 && r.firstIndex() == 0
          && Arrays.equals(r.pool().arrays().get(0).shape(), new long[] {1000, 3}), "append " + r);
      Pool p = c.label(id, new long[] {4, 5}, new long[] {1, 0});
      expect(p.labeledCount() == 2 && p.version() > r.pool().version(), "label " + p);
      expect(c.listPools(2).stream().anyMatch(q -> q.poolId().equals(id)), "listPools");
      expect(c.getPool(id).itemCount() == 1000, "getPool");
      c.deletePool(id);
      try {
        c.getPool(id);
        throw new AssertionError("a deleted pool is still there");
      } catch (AssayException e) {
        expect(e.code() == Status.Code.NOT_FOUND && e.reason().equals("POOL_NOT_FOUND"), e.toString());
      }
      try {
        c.append(id, Map.of("embeddings", Tensor.f32(emb, 1000, 3)), 1024, "");
        throw new AssertionError("append to a missing pool: no error");
      } catch (AssayException e) {
        expect(e.code() == Status.Code.NOT_FOUND, e.toString());
      }
    });
    check("a replaced round answers like the same arrays inline", () -> {
      String id = "java-round-" + AssayClient.newRequestId().substring(0, 8);
      int n = 60;
      int k = 3;
      Random rng = new Random(11);
      Tensor first = randomProbs(rng, n, k);
      Tensor second = randomProbs(rng, n, k);
      c.createPool(id);
      try {
        c.append(id, Map.of("probs", first), 256, "");
        Pool labeled = c.label(id, new long[] {7}, new long[] {2});
        Pool after = c.replace(id, Map.of("probs", second), 256, "");
        expect(after.version() > labeled.version() && after.itemCount() == n
            && after.labeledCount() == 1, "replace " + after);
        Selection got = c.select(new SelectRequest("entropy", 5).pool(id));
        Selection want = c.select(new SelectRequest("entropy", 5).input("probs", second).exclude(7));
        expect(got.poolVersion() == after.version() && Arrays.equals(got.indices(), want.indices()),
            "pool " + Arrays.toString(got.indices()) + " inline " + Arrays.toString(want.indices()));
        Tensor shortOne = new Tensor(DType.FP32, new long[] {n - 1, k},
            second.data().substring(0, (n - 1) * k * 4));
        try {
          c.replace(id, Map.of("probs", shortOne));
          throw new AssertionError("a replace of n - 1 items was accepted");
        } catch (AssayException e) {
          expect(e.code() == Status.Code.INVALID_ARGUMENT, e.toString());
        }
        expect(c.getPool(id).version() == after.version(), "a refused replace changed the pool");
      } finally {
        c.deletePool(id);
      }
    });
    if (!System.getenv().getOrDefault("ASSAY_TOKEN", "").isEmpty()) {
      check("a call without the bearer token is UNAUTHENTICATED", () -> {
        ClientOptions anon = options(Duration.ofSeconds(10)).token("");
        try (AssayClient a = new AssayClient(target, anon)) {
          a.listStrategies();
          throw new AssertionError("no error");
        } catch (AssayException e) {
          expect(e.code() == Status.Code.UNAUTHENTICATED, e.toString());
        }
      });
    }
  }

  static Tensor randomProbs(Random rng, int n, int k) {
    float[] p = new float[n * k];
    for (int i = 0; i < n; i++) {
      float sum = 0;
      for (int j = 0; j < k; j++) {
        p[i * k + j] = 0.05f + 0.95f * rng.nextFloat();
        sum += p[i * k + j];
      }
      for (int j = 0; j < k; j++) {
        p[i * k + j] /= sum;
      }
    }
    return Tensor.f32(p, n, k);
  }
}
