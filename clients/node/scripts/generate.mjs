// Generates TypeScript types and the grpc-js client of assay.v1 from ../../protos (ts-proto).
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const protos = join(root, "..", "..", "protos");
const out = join(root, "gen");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const plugin = join(root, "node_modules", ".bin", "protoc-gen-ts_proto");
execFileSync("protoc", [
  `-I${protos}`, "-I/usr/include",
  `--plugin=protoc-gen-ts_proto=${plugin}`,
  `--ts_proto_out=${out}`,
  "--ts_proto_opt=outputServices=grpc-js,esModuleInterop=true,importSuffix=.js,forceLong=bigint",
  join(protos, "assay/v1/tensor.proto"), join(protos, "assay/v1/assay.proto"),
], { stdio: "inherit" });
console.log(`generated ${out}`);
