// Decoding the rich status of a failed call: the google.rpc.Status the server puts in the
// grpc-status-details-bin trailer, with its ErrorInfo and RetryInfo (docs/errors.md).
import * as grpc from "@grpc/grpc-js";
import { ErrorInfo, RetryInfo } from "../gen/google/rpc/error_details.js";
import { Status } from "../gen/google/rpc/status.js";

/** ErrorInfo.domain of Assay's own errors; ErrorInfo of other domains is ignored. */
export const ERROR_DOMAIN = "assay.v1";
const DETAILS_KEY = "grpc-status-details-bin";
const TYPE_PREFIX = "type.googleapis.com/";

/** What AssayError takes from the status details. */
export interface RichDetails {
  reason?: string;
  field?: string;
  retryDelayMs?: number;
}

/** The details of a serialized google.rpc.Status; empty when there are none or they are
 * unreadable, so that the status code is still there to act on. */
export function decodeStatus(bytes: Uint8Array): RichDetails {
  const out: RichDetails = {};
  let status: Status;
  try {
    status = Status.decode(bytes);
  } catch {
    return out;
  }
  for (const any of status.details) {
    const type = any.typeUrl.startsWith(TYPE_PREFIX) ? any.typeUrl.slice(TYPE_PREFIX.length) : "";
    try {
      if (type === "google.rpc.ErrorInfo") {
        const info = ErrorInfo.decode(any.value);
        if (info.domain === ERROR_DOMAIN) {
          out.reason = info.reason;
          out.field = info.metadata.field ?? "";
        }
      } else if (type === "google.rpc.RetryInfo") {
        const delay = RetryInfo.decode(any.value).retryDelay;
        if (delay) out.retryDelayMs = Number(delay.seconds) * 1000 + delay.nanos / 1e6;
      }
    } catch {
      // A detail that does not decode is skipped; the others still count.
    }
  }
  return out;
}

/** The details in a call's trailing metadata (see decodeStatus). */
export function richDetails(metadata: grpc.Metadata | undefined): RichDetails {
  const value = metadata?.get(DETAILS_KEY)[0];
  if (value === undefined) return {};
  return decodeStatus(typeof value === "string" ? Buffer.from(value, "base64") : value);
}
