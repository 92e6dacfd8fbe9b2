#!/usr/bin/env bash
# Generate every client from protos/ with buf (buf.gen.yaml) into OUT_ROOT.
#
# Usage: scripts/gen_protos.sh OUT_ROOT
#
# OUT_ROOT mirrors the repository: the generated trees land in
#   OUT_ROOT/clients/python/billing       Python messages, gRPC stubs, .pyi stubs
#   OUT_ROOT/clients/typescript/src/gen   TypeScript (protobuf-es) incl. google/rpc
#   OUT_ROOT/clients/go/billing           Go messages and gRPC stubs
# `make gen` passes the repository root; `make gen-check` a scratch directory
# and diffs. Each tree is generated into a scratch directory first and then
# replaces its target whole, so output from a deleted .proto never lingers and
# two runs produce the same bytes.
#
# Tools (installed by `make gen`, see buf.gen.yaml): BUF (default
# .tools/node_modules/.bin/buf), the pinned Python generators in
# .tools/gen-protoc and .tools/gen-plugins, protoc-gen-es in
# clients/typescript/node_modules, protoc-gen-go{,-grpc} on PATH.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUT_ROOT" >&2
  exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mkdir -p "$1"
OUT_ROOT="$(cd "$1" && pwd)"
BUF="${BUF:-.tools/node_modules/.bin/buf}"
PLUGINS_PY=.tools/gen-plugins/bin/python

missing=()
for tool in "$BUF" .tools/gen-protoc/bin/python "$PLUGINS_PY" .tools/gen-plugins/bin/protoc-gen-mypy \
  clients/typescript/node_modules/.bin/protoc-gen-es; do
  [[ -x "$tool" ]] || missing+=("$tool")
done
for tool in protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "error: code generators missing: ${missing[*]} (make gen installs them)" >&2
  exit 1
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# The contract, for every language.
"$BUF" generate --template buf.gen.yaml -o "$scratch/out"

# google.rpc error details for TypeScript, from the pinned googleapis protos.
rpc_dir="$("$PLUGINS_PY" -c 'import os, google.rpc.error_details_pb2 as m; print(os.path.dirname(m.__file__))')"
mkdir -p "$scratch/googleapis/google/rpc"
cp "$rpc_dir/error_details.proto" "$scratch/googleapis/google/rpc/"
"$BUF" generate "$scratch/googleapis" --template clients/typescript/buf.gen.googleapis.yaml -o "$scratch/out"

# The Python package's own files, byte-for-byte the same every time.
py="$scratch/out/python/billing"
printf '%s\n' '"""Generated gRPC client for the billing service (package billing.v1)."""' > "$py/__init__.py"
printf '%s\n' '"""Generated code for billing.v1. Do not edit: run `make gen`."""' > "$py/v1/__init__.py"
: > "$py/py.typed"
: > "$py/v1/py.typed"

replace_tree() {
  local from="$1" to="$2"
  [[ -d "$from" ]] || { echo "error: buf produced no $from" >&2; exit 1; }
  mkdir -p "$(dirname "$to")"
  rm -rf "$to"
  cp -R "$from" "$to"
}
replace_tree "$py" "$OUT_ROOT/clients/python/billing"
replace_tree "$scratch/out/typescript" "$OUT_ROOT/clients/typescript/src/gen"
replace_tree "$scratch/out/go/billing" "$OUT_ROOT/clients/go/billing"

echo "generated $(cd "$scratch/out" && find . -type f | wc -l | tr -d ' ') files under $OUT_ROOT/clients"
