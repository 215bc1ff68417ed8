package dev.assay.client;

import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;

/**
 * Options of an {@link AssayClient}. The defaults are a plaintext channel, a 60 s deadline per
 * call (covering every retry attempt), 64 MiB messages and the retries of the contract's service
 * config ({@code protos/assay/v1/service_config.json}, bundled in the jar).
 *
 * <pre>{@code
 * new ClientOptions().timeout(Duration.ofSeconds(30)).token(token).tls(ca, cert, key)
 * }</pre>
 */
public final class ClientOptions {
  Duration timeout = Duration.ofSeconds(60);
  String token = "";
  boolean tls;
  Path caFile;
  Path certFile;
  Path keyFile;
  String serverName = "";
  int maxMessageBytes = 64 << 20;
  Map<String, ?> serviceConfig;
  boolean retries = true;
  long retryBufferBytes = 16L << 20;

  /** The deadline of each call, across all its attempts (default 60 s). */
  public ClientOptions timeout(Duration d) {
    this.timeout = d;
    return this;
  }

  /** A bearer token, sent as {@code authorization: Bearer <token>}. */
  public ClientOptions token(String token) {
    this.token = token == null ? "" : token;
    return this;
  }

  /**
   * TLS: {@code ca} (PEM; null: the system's trust store) verifies the server; {@code cert} and
   * {@code key} (PEM, the key in PKCS#8; null: none) are the client's for mTLS.
   */
  public ClientOptions tls(Path ca, Path cert, Path key) {
    this.tls = true;
    this.caFile = ca;
    this.certFile = cert;
    this.keyFile = key;
    return this;
  }

  /** The name to verify in the server's certificate, when it differs from the target host. */
  public ClientOptions serverName(String name) {
    this.serverName = name == null ? "" : name;
    return this;
  }

  /** Largest message received (default 64 MiB). */
  public ClientOptions maxMessageBytes(int n) {
    this.maxMessageBytes = n;
    return this;
  }

  /**
   * A service config (gRPC's JSON, parsed into maps, lists, strings, Doubles and Booleans) to use
   * instead of the bundled one.
   */
  public ClientOptions serviceConfig(Map<String, ?> config) {
    this.serviceConfig = config;
    return this;
  }

  /** Turns gRPC retries off (on by default, as the service config says). */
  public ClientOptions retries(boolean on) {
    this.retries = on;
    return this;
  }

  /**
   * Bytes of a call that gRPC keeps to replay it on a retry (default 16 MiB): an append or
   * replace stream longer than this is not retried.
   */
  public ClientOptions retryBufferBytes(long n) {
    this.retryBufferBytes = n;
    return this;
  }
}
