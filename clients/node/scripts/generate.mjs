// Generates TypeScript types and the grpc-js client of assay.v1 from ../../protos (ts-proto).
import { execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const protos = join(root, "..", "..", "protos");
const out = join(root, "gen");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const plugin = join(root, "node_modules", ".bin", "protoc-gen-ts_proto");
// googleapis' google.rpc status protos, to decode the rich error details (AssayError).
const thirdParty = join(protos, "third_party");
execFileSync("protoc", [
  `-I${thirdParty}`, `-I${protos}`, "-I/usr/include",
  `--plugin=protoc-gen-ts_proto=${plugin}`,
  `--ts_proto_out=${out}`,
  "--ts_proto_opt=outputServices=grpc-js,esModuleInterop=true,importSuffix=.js,forceLong=bigint",
  // Every file of the contract, so a new import never breaks the build.
  ...readdirSync(join(protos, "assay/v1")).filter((f) => f.endsWith(".proto")).sort()
    .map((f) => join(protos, "assay/v1", f)),
  join(thirdParty, "google/rpc/status.proto"),
  join(thirdParty, "google/rpc/error_details.proto"),
], { stdio: "inherit" });
console.log(`generated ${out}`);
