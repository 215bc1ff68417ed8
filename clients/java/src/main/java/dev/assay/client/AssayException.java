package dev.assay.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import dev.assay.client.rpc.BadRequest;
import dev.assay.client.rpc.ErrorInfo;
import dev.assay.client.rpc.RetryInfo;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.time.Duration;

/**
 * A failed call, with what a program needs to act on it: the gRPC status code, the server's
 * message (for people), and from the status details ({@code google.rpc.ErrorInfo},
 * {@code BadRequest} and {@code RetryInfo} in the {@code grpc-status-details-bin} trailer; see
 * docs/errors.md) the stable {@link #reason()} to branch on ({@code "DISK_FULL"},
 * {@code "POOL_NOT_FOUND"}, ...; empty for a status that did not come from Assay, such as a
 * transport error), the offending request {@link #field()} (empty: none) and
 * {@link #retryDelay()}, the server's back-off hint for a refusal that the same request may
 * retry (null: none).
 *
 * <p>It is a {@link StatusRuntimeException}, so code that handles gRPC's own exception handles
 * this one too ({@code getStatus().getCode()}).
 */
public class AssayException extends StatusRuntimeException {
  private static final long serialVersionUID = 1L;

  /** ErrorInfo.domain of Assay's own errors; ErrorInfo of other domains is ignored. */
  public static final String DOMAIN = "assay.v1";

  /** The trailer that carries the serialized {@code google.rpc.Status}. */
  public static final Metadata.Key<byte[]> DETAILS_KEY =
      Metadata.Key.of("grpc-status-details-bin", Metadata.BINARY_BYTE_MARSHALLER);

  private final String reason;
  private final String field;
  private final Duration retryDelay;

  /** An exception of a status and its trailers (null: none), decoding the details. */
  public AssayException(Status status, Metadata trailers) {
    super(status, trailers);
    String r = "";
    String f = "";
    Duration delay = null;
    dev.assay.client.rpc.Status rich = richStatus(status, trailers);
    if (rich != null) {
      String violation = "";
      for (Any any : rich.getDetailsList()) {
        String kind = any.getTypeUrl().substring(any.getTypeUrl().lastIndexOf('/') + 1);
        try {
          switch (kind) {
            case "google.rpc.ErrorInfo" -> {
              ErrorInfo info = ErrorInfo.parseFrom(any.getValue());
              if (DOMAIN.equals(info.getDomain())) {
                r = info.getReason();
                f = info.getMetadataOrDefault("field", "");
              }
            }
            case "google.rpc.BadRequest" -> {
              BadRequest bad = BadRequest.parseFrom(any.getValue());
              if (bad.getFieldViolationsCount() > 0) {
                violation = bad.getFieldViolations(0).getField();
              }
            }
            case "google.rpc.RetryInfo" -> {
              RetryInfo retry = RetryInfo.parseFrom(any.getValue());
              if (retry.hasRetryDelay()) {
                delay = Duration.ofSeconds(retry.getRetryDelay().getSeconds(),
                    retry.getRetryDelay().getNanos());
              }
            }
            default -> { }
          }
        } catch (InvalidProtocolBufferException e) {
          // An undecodable detail is skipped: the status code remains to act on.
        }
      }
      if (f.isEmpty()) {
        f = violation;
      }
    }
    this.reason = r;
    this.field = f;
    this.retryDelay = delay;
  }

  /**
   * The {@code google.rpc.Status} of the trailers, or null when there is none, it does not
   * decode, or its code differs from the call's own (a status that is not this call's).
   */
  static dev.assay.client.rpc.Status richStatus(Status status, Metadata trailers) {
    if (trailers == null) {
      return null;
    }
    byte[] raw = trailers.get(DETAILS_KEY);
    if (raw == null) {
      return null;
    }
    try {
      dev.assay.client.rpc.Status rich = dev.assay.client.rpc.Status.parseFrom(raw);
      return rich.getCode() == status.getCode().value() ? rich : null;
    } catch (InvalidProtocolBufferException e) {
      return null;
    }
  }

  /** The AssayException of any throwable from a gRPC call (itself when it is one). */
  public static AssayException of(Throwable t) {
    if (t instanceof AssayException a) {
      return a;
    }
    return new AssayException(Status.fromThrowable(t), Status.trailersFromThrowable(t));
  }

  /** The gRPC status code. */
  public Status.Code code() {
    return getStatus().getCode();
  }

  /** The canonical name of the code, e.g. {@code "INVALID_ARGUMENT"}. */
  public String codeName() {
    return code().name();
  }

  /** The server's message (for people; programs branch on {@link #reason()}). */
  public String serverMessage() {
    String d = getStatus().getDescription();
    return d == null ? "" : d;
  }

  /** The ErrorReason name without its prefix ({@code "SHAPE_MISMATCH"}); empty: none. */
  public String reason() {
    return reason;
  }

  /** The offending request field ({@code "budget"}, {@code "inputs.probs"}); empty: none. */
  public String field() {
    return field;
  }

  /** The server's back-off hint for a retryable refusal; null when it gave none. */
  public Duration retryDelay() {
    return retryDelay;
  }

  @Override
  public String getMessage() {
    return "assay: " + codeName() + (reason.isEmpty() ? "" : " " + reason) + ": " + serverMessage();
  }
}
