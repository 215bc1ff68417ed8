package dev.assay.client;

import com.google.gson.Gson;
import com.google.protobuf.ByteString;
import dev.assay.v1.AppendChunk;
import dev.assay.v1.AppendHeader;
import dev.assay.v1.AppendPoolItemsRequest;
import dev.assay.v1.AppendPoolItemsResponse;
import dev.assay.v1.ArrayHeader;
import dev.assay.v1.AssayServiceGrpc;
import dev.assay.v1.CreatePoolRequest;
import dev.assay.v1.DeleteModelRequest;
import dev.assay.v1.DeletePoolRequest;
import dev.assay.v1.GetModelRequest;
import dev.assay.v1.GetPoolRequest;
import dev.assay.v1.InputBinding;
import dev.assay.v1.LabelPoolItemsRequest;
import dev.assay.v1.ListModelsRequest;
import dev.assay.v1.ListModelsResponse;
import dev.assay.v1.ListPoolsRequest;
import dev.assay.v1.ListPoolsResponse;
import dev.assay.v1.ListStrategiesRequest;
import dev.assay.v1.ModelServiceGrpc;
import dev.assay.v1.OutputBinding;
import dev.assay.v1.RegisterModelHeader;
import dev.assay.v1.RegisterModelRequest;
import dev.assay.v1.RegisterModelResponse;
import dev.assay.v1.ReplacePoolArraysRequest;
import dev.assay.v1.ReplacePoolArraysResponse;
import io.grpc.ChannelCredentials;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.stub.AbstractStub;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import io.grpc.stub.MetadataUtils;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.Reader;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;
import java.util.function.Supplier;

/**
 * A connection to an Assay server: the pool round API, Select, strategies and registered
 * models. Safe for concurrent use; close it when done.
 *
 * <pre>{@code
 * try (AssayClient c = new AssayClient("127.0.0.1:50051", new ClientOptions())) {
 *   Selection s = c.select(new SelectRequest("entropy", 10).input("probs", Tensor.f32(p, n, k)));
 *   long[] best = s.indices(); // best first
 * }
 * }</pre>
 *
 * <p>Every call has one deadline ({@link ClientOptions#timeout}, or {@link #withTimeout}) that
 * covers all its attempts; gRPC retries UNAVAILABLE (and RESOURCE_EXHAUSTED that the server's
 * pushback marks retryable) by the contract's service config, on the methods safe to send twice (Select, the reads, and the writes that carry a request id, which
 * this client always fills). Failures are {@link AssayException}s.
 */
public final class AssayClient implements AutoCloseable {
  /** Resource of the bundled service config (a copy of protos/assay/v1/service_config.json). */
  public static final String SERVICE_CONFIG_RESOURCE = "/dev/assay/client/service_config.json";

  /** Default size of the chunks of an append, replace or model upload (4 MiB). */
  public static final int DEFAULT_CHUNK_BYTES = 4 << 20;

  private final ManagedChannel channel;
  private final boolean owner;
  private final Duration timeout;
  private final String token;
  private final AssayServiceGrpc.AssayServiceBlockingStub blocking;
  private final AssayServiceGrpc.AssayServiceStub async;
  private final ModelServiceGrpc.ModelServiceBlockingStub modelsBlocking;
  private final ModelServiceGrpc.ModelServiceStub models;

  /** A plaintext client with the default options. */
  public AssayClient(String target) {
    this(target, new ClientOptions());
  }

  /** A client of {@code target} ("host:port"); the connection is made on the first call. */
  public AssayClient(String target, ClientOptions opts) {
    this(channel(target, opts), true, opts.timeout, opts.token);
  }

  private AssayClient(ManagedChannel channel, boolean owner, Duration timeout, String token) {
    this.channel = channel;
    this.owner = owner;
    this.timeout = timeout;
    AssayServiceGrpc.AssayServiceBlockingStub b = AssayServiceGrpc.newBlockingStub(channel);
    AssayServiceGrpc.AssayServiceStub a = AssayServiceGrpc.newStub(channel);
    ModelServiceGrpc.ModelServiceBlockingStub mb = ModelServiceGrpc.newBlockingStub(channel);
    ModelServiceGrpc.ModelServiceStub m = ModelServiceGrpc.newStub(channel);
    if (!token.isEmpty()) {
      Metadata headers = new Metadata();
      headers.put(Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER),
          "Bearer " + token);
      b = b.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
      a = a.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
      mb = mb.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
      m = m.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
    }
    this.blocking = b;
    this.async = a;
    this.modelsBlocking = mb;
    this.models = m;
    this.token = token;
  }

  private static ManagedChannel channel(String target, ClientOptions opts) {
    ChannelCredentials creds = InsecureChannelCredentials.create();
    if (opts.tls) {
      try {
        TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder();
        if (opts.caFile != null) {
          tls.trustManager(opts.caFile.toFile());
        }
        if (opts.certFile != null) {
          tls.keyManager(opts.certFile.toFile(), opts.keyFile.toFile());
        }
        creds = tls.build();
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
    }
    ManagedChannelBuilder<?> b = Grpc.newChannelBuilder(target, creds)
        .maxInboundMessageSize(opts.maxMessageBytes);
    if (!opts.serverName.isEmpty()) {
      b.overrideAuthority(opts.serverName);
    }
    if (opts.retries) {
      Map<String, ?> config = opts.serviceConfig != null ? opts.serviceConfig : serviceConfig();
      b.defaultServiceConfig(config)
          .enableRetry()
          .perRpcBufferLimit(opts.retryBufferBytes)
          .retryBufferSize(Math.max(opts.retryBufferBytes * 4, 64L << 20));
    } else {
      b.disableRetry();
    }
    return b.build();
  }

  /** The bundled service config, parsed as gRPC wants it (numbers are Doubles). */
  @SuppressWarnings("unchecked")
  public static Map<String, ?> serviceConfig() {
    try (InputStream in = AssayClient.class.getResourceAsStream(SERVICE_CONFIG_RESOURCE)) {
      if (in == null) {
        throw new IllegalStateException(SERVICE_CONFIG_RESOURCE + " is missing from the jar");
      }
      try (Reader r = new InputStreamReader(in, StandardCharsets.UTF_8)) {
        return new Gson().fromJson(r, Map.class);
      }
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  /** A view of this client whose calls get {@code d} as deadline; it shares the connection. */
  public AssayClient withTimeout(Duration d) {
    return new AssayClient(channel, false, d, token);
  }

  /** The underlying channel (for stubs of your own). */
  public ManagedChannel channel() {
    return channel;
  }

  /** Closes the connection (a {@link #withTimeout} view leaves it to its owner). */
  @Override
  public void close() {
    if (!owner) {
      return;
    }
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  /** A random (version 4) UUID, the form of request id the server expects. */
  public static String newRequestId() {
    return UUID.randomUUID().toString();
  }

  private <S extends AbstractStub<S>> S deadline(S stub) {
    return stub.withDeadlineAfter(timeout.toNanos(), TimeUnit.NANOSECONDS);
  }

  private static <T> T call(Supplier<T> rpc) {
    try {
      return rpc.get();
    } catch (StatusRuntimeException e) {
      throw AssayException.of(e);
    }
  }

  // -- strategies and Select ------------------------------------------------------------------

  /** Every strategy the server offers, sorted by name. */
  public List<StrategyInfo> listStrategies() {
    return call(() -> deadline(blocking).listStrategies(ListStrategiesRequest.getDefaultInstance()))
        .getStrategiesList().stream().map(StrategyInfo::of).toList();
  }

  /** Runs a strategy; retried by the service config with the same request id, within the deadline. */
  public Selection select(SelectRequest request) {
    dev.assay.v1.SelectRequest req = request.toProto();
    return Selection.of(call(() -> deadline(blocking).select(req)));
  }

  // -- pools ----------------------------------------------------------------------------------

  /** Creates an empty pool; ALREADY_EXISTS if the id is taken. */
  public Pool createPool(String poolId) {
    return Pool.of(call(() -> deadline(blocking)
        .createPool(CreatePoolRequest.newBuilder().setPoolId(poolId).build())).getPool());
  }

  /** A pool's metadata; NOT_FOUND if it does not exist. */
  public Pool getPool(String poolId) {
    return Pool.of(call(() -> deadline(blocking)
        .getPool(GetPoolRequest.newBuilder().setPoolId(poolId).build())).getPool());
  }

  /** Every pool, in id order, following the pages. */
  public List<Pool> listPools() {
    return listPools(100);
  }

  /** Every pool, in id order, fetched {@code pageSize} at a time. */
  public List<Pool> listPools(int pageSize) {
    List<Pool> out = new ArrayList<>();
    String token = "";
    do {
      ListPoolsRequest req =
          ListPoolsRequest.newBuilder().setPageSize(pageSize).setPageToken(token).build();
      ListPoolsResponse r = call(() -> deadline(blocking).listPools(req));
      r.getPoolsList().forEach(p -> out.add(Pool.of(p)));
      token = r.getNextPageToken();
    } while (!token.isEmpty());
    return out;
  }

  /** Deletes a pool and its arrays; NOT_FOUND if it does not exist. */
  public void deletePool(String poolId) {
    call(() -> deadline(blocking)
        .deletePool(DeletePoolRequest.newBuilder().setPoolId(poolId).build()));
  }

  /**
   * Appends items: streams the arrays (role to tensor, all with the same number of new items) in
   * 4 MiB chunks. Nothing is stored unless the whole stream arrives.
   */
  public AppendResult append(String poolId, Map<String, Tensor> arrays) {
    return append(poolId, arrays, DEFAULT_CHUNK_BYTES, "");
  }

  /** {@link #append(String, Map)} in chunks of {@code chunkBytes}, with a request id (empty: a new UUID). */
  public AppendResult append(String poolId, Map<String, Tensor> arrays, int chunkBytes,
      String requestId) {
    AppendPoolItemsResponse r = upload(
        o -> deadline(async).appendPoolItems(o),
        header(poolId, arrays, requestId), arrays, chunkBytes,
        h -> AppendPoolItemsRequest.newBuilder().setHeader(h).build(),
        c -> AppendPoolItemsRequest.newBuilder().setChunk(c).build());
    return new AppendResult(Pool.of(r.getPool()), r.getFirstIndex(), r.getAppendedCount());
  }

  /**
   * Replaces the named arrays of a pool for all its N items (a round of the active-learning
   * loop: the retrained model's probs, samples or embeddings), streamed like an append. Labels,
   * raw model inputs, recorded epochs and arrays not named stay. Returns the pool at its new
   * version, which later Selects report ({@link Selection#poolVersion}).
   */
  public Pool replace(String poolId, Map<String, Tensor> arrays) {
    return replace(poolId, arrays, DEFAULT_CHUNK_BYTES, "");
  }

  /** {@link #replace(String, Map)} in chunks of {@code chunkBytes}, with a request id (empty: a new UUID). */
  public Pool replace(String poolId, Map<String, Tensor> arrays, int chunkBytes,
      String requestId) {
    ReplacePoolArraysResponse r = upload(
        o -> deadline(async).replacePoolArrays(o),
        header(poolId, arrays, requestId), arrays, chunkBytes,
        h -> ReplacePoolArraysRequest.newBuilder().setHeader(h).build(),
        c -> ReplacePoolArraysRequest.newBuilder().setChunk(c).build());
    return Pool.of(r.getPool());
  }

  /** Marks items labeled with their class labels; labeled items are never selected again. */
  public Pool label(String poolId, long[] indices, long[] labels) {
    return label(poolId, indices, labels, "");
  }

  /** {@link #label(String, long[], long[])} with a request id (empty: a new UUID). */
  public Pool label(String poolId, long[] indices, long[] labels, String requestId) {
    LabelPoolItemsRequest.Builder req = LabelPoolItemsRequest.newBuilder().setPoolId(poolId)
        .setRequestId(requestId.isEmpty() ? newRequestId() : requestId);
    for (long i : indices) {
      req.addIndices(i);
    }
    for (long l : labels) {
      req.addLabels(l);
    }
    LabelPoolItemsRequest built = req.build();
    return Pool.of(call(() -> deadline(blocking).labelPoolItems(built)).getPool());
  }

  private static AppendHeader header(String poolId, Map<String, Tensor> arrays, String requestId) {
    AppendHeader.Builder h = AppendHeader.newBuilder().setPoolId(poolId)
        .setRequestId(requestId.isEmpty() ? newRequestId() : requestId);
    arrays.forEach((name, t) -> {
      ArrayHeader.Builder a = ArrayHeader.newBuilder().setName(name).setDtype(t.dtype().proto());
      for (long d : t.shape()) {
        a.addShape(d);
      }
      h.addArrays(a);
    });
    return h.build();
  }

  private static <Req, Resp> Resp upload(
      Function<StreamObserver<Resp>, StreamObserver<Req>> start, AppendHeader header,
      Map<String, Tensor> arrays, int chunkBytes, Function<AppendHeader, Req> headerMessage,
      Function<AppendChunk, Req> chunkMessage) {
    int size = chunkBytes > 0 ? chunkBytes : DEFAULT_CHUNK_BYTES;
    return stream(start, send -> {
      send.accept(headerMessage.apply(header));
      int index = 0;
      for (Tensor t : arrays.values()) {
        ByteString data = t.data();
        for (int off = 0; off < data.size(); off += size) {
          send.accept(chunkMessage.apply(AppendChunk.newBuilder().setArrayIndex(index)
              .setOffset(off).setData(data.substring(off, Math.min(data.size(), off + size)))
              .build()));
        }
        index++;
      }
    });
  }

  /** Sends messages when the stream is ready to take them; stops when the server has answered. */
  interface Sender<Req> {
    void accept(Req message) throws Stopped, InterruptedException;
  }

  /** The server ended the call while messages were still being sent. */
  static final class Stopped extends Exception {
    private static final long serialVersionUID = 1L;

    Stopped() {
      super(null, null, false, false);
    }
  }

  interface Body<Req> {
    void send(Sender<Req> send) throws Stopped, InterruptedException;
  }

  /**
   * A client-streaming call with flow control: each message waits until the transport is ready
   * for it, and the first error the server sends ends the sending (its status is what the call
   * throws, not a broken pipe).
   */
  static <Req, Resp> Resp stream(Function<StreamObserver<Resp>, StreamObserver<Req>> start,
      Body<Req> body) {
    CompletableFuture<Resp> result = new CompletableFuture<>();
    Object ready = new Object();
    ClientCallStreamObserver<?>[] holder = new ClientCallStreamObserver<?>[1];
    ClientResponseObserver<Req, Resp> observer = new ClientResponseObserver<>() {
      private Resp value;

      @Override
      public void beforeStart(ClientCallStreamObserver<Req> requests) {
        holder[0] = requests;
        requests.setOnReadyHandler(() -> {
          synchronized (ready) {
            ready.notifyAll();
          }
        });
      }

      @Override
      public void onNext(Resp v) {
        value = v;
      }

      @Override
      public void onError(Throwable t) {
        result.completeExceptionally(t);
        synchronized (ready) {
          ready.notifyAll();
        }
      }

      @Override
      public void onCompleted() {
        result.complete(value);
        synchronized (ready) {
          ready.notifyAll();
        }
      }
    };
    StreamObserver<Req> requests;
    try {
      requests = start.apply(observer);
    } catch (StatusRuntimeException e) {
      throw AssayException.of(e);
    }
    ClientCallStreamObserver<?> call = holder[0];
    try {
      body.send(message -> {
        synchronized (ready) {
          while (!call.isReady() && !result.isDone()) {
            ready.wait(50);
          }
        }
        if (result.isDone()) {
          throw new Stopped();
        }
        requests.onNext(message);
      });
      requests.onCompleted();
    } catch (Stopped stopped) {
      // The server answered before the end of the stream: its status says why.
    } catch (InterruptedException e) {
      call.cancel("interrupted", e);
      Thread.currentThread().interrupt();
      throw new AssayException(Status.CANCELLED.withDescription("interrupted"), null);
    } catch (RuntimeException e) {
      call.cancel("client failed while sending", e);
      throw e;
    }
    try {
      return result.get();
    } catch (ExecutionException e) {
      throw AssayException.of(e.getCause());
    } catch (InterruptedException e) {
      call.cancel("interrupted", e);
      Thread.currentThread().interrupt();
      throw new AssayException(Status.CANCELLED.withDescription("interrupted"), null);
    }
  }

  // -- registered models ----------------------------------------------------------------------

  /**
   * Registers an ONNX model. {@code outputs} maps roles ("logits" or "probs", "embeddings",
   * "loss", "discriminator") to graph output names; by default one graph input reads the array
   * "model_inputs" and several read "model_inputs.&lt;input name&gt;" each. The file is streamed
   * in 4 MiB chunks with its SHA-256, which the server checks before storing anything.
   */
  public Model registerModel(String modelId, byte[] onnx, Map<String, String> outputs) {
    return registerModel(modelId, onnx, outputs, Map.of(), DEFAULT_CHUNK_BYTES);
  }

  /** {@link #registerModel(String, byte[], Map)} from a file. */
  public Model registerModel(String modelId, Path onnx, Map<String, String> outputs) {
    try {
      return registerModel(modelId, Files.readAllBytes(onnx), outputs);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  /**
   * Registers an ONNX model with explicit input bindings ({@code inputs}: graph input name to
   * array, e.g. "input_ids" to "model_inputs.input_ids"; empty: the defaults), streamed in
   * chunks of {@code chunkBytes}.
   */
  public Model registerModel(String modelId, byte[] onnx, Map<String, String> outputs,
      Map<String, String> inputs, int chunkBytes) {
    RegisterModelHeader.Builder h = RegisterModelHeader.newBuilder().setModelId(modelId)
        .setSizeBytes(onnx.length).setSha256(sha256(onnx));
    outputs.forEach((role, name) ->
        h.addOutputs(OutputBinding.newBuilder().setRole(role).setOutputName(name)));
    inputs.forEach((name, array) ->
        h.addInputs(InputBinding.newBuilder().setInputName(name).setArray(array)));
    int size = chunkBytes > 0 ? chunkBytes : DEFAULT_CHUNK_BYTES;
    RegisterModelResponse r = stream(o -> deadline(models).registerModel(o), send -> {
      send.accept(RegisterModelRequest.newBuilder().setHeader(h).build());
      for (int off = 0; off < onnx.length; off += size) {
        send.accept(RegisterModelRequest.newBuilder()
            .setChunk(ByteString.copyFrom(onnx, off, Math.min(size, onnx.length - off))).build());
      }
    });
    return Model.of(r.getModel());
  }

  /** A model's metadata; NOT_FOUND if it does not exist. */
  public Model getModel(String modelId) {
    return Model.of(call(() -> deadline(modelsBlocking)
        .getModel(GetModelRequest.newBuilder().setModelId(modelId).build())).getModel());
  }

  /** Every registered model, in id order, following the pages. */
  public List<Model> listModels() {
    List<Model> out = new ArrayList<>();
    String token = "";
    do {
      ListModelsRequest req =
          ListModelsRequest.newBuilder().setPageSize(100).setPageToken(token).build();
      ListModelsResponse r = call(() -> deadline(modelsBlocking).listModels(req));
      r.getModelsList().forEach(m -> out.add(Model.of(m)));
      token = r.getNextPageToken();
    } while (!token.isEmpty());
    return out;
  }

  /** Deletes a model and its file; NOT_FOUND if it does not exist. */
  public void deleteModel(String modelId) {
    call(() -> deadline(modelsBlocking)
        .deleteModel(DeleteModelRequest.newBuilder().setModelId(modelId).build()));
  }

  static String sha256(byte[] data) {
    try {
      return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(data));
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException(e);
    }
  }
}
