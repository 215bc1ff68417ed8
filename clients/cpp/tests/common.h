// Client options for the tests and examples, from the environment.
#pragma once
#include <cstdlib>
#include <string>

#include "assay/client.h"

inline std::string env_or(const char* name, const std::string& fallback = {}) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : fallback;
}

// ASSAY_TOKEN, ASSAY_TLS_CA, ASSAY_TLS_CERT, ASSAY_TLS_KEY, ASSAY_TLS_SERVER_NAME.
inline assay::ClientOptions options_from_env() {
  assay::ClientOptions o;
  // Long enough for a first Select that compiles its kernel on a busy 2-core machine
  // (over 60 s was seen); a healthy warm server answers the vectors in milliseconds.
  o.timeout = std::chrono::seconds(300);
  o.token = env_or("ASSAY_TOKEN");
  if (!env_or("ASSAY_TLS_CA").empty()) {
    o.tls = true;
    o.root_certs_pem = assay::read_file(env_or("ASSAY_TLS_CA"));
    if (!env_or("ASSAY_TLS_CERT").empty()) {
      o.client_cert_pem = assay::read_file(env_or("ASSAY_TLS_CERT"));
      o.client_key_pem = assay::read_file(env_or("ASSAY_TLS_KEY"));
    }
    o.server_name_override = env_or("ASSAY_TLS_SERVER_NAME");
  }
  return o;
}
