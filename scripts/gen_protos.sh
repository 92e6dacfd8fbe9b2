#!/usr/bin/env bash
# Generate Python code and type stubs for protos/billing/v1 into OUT_DIR.
#
# Usage: scripts/gen_protos.sh OUT_DIR
#
# Writes OUT_DIR/billing/__init__.py, OUT_DIR/billing/v1/{__init__.py,py.typed}
# and, per .proto, *_pb2.py, *_pb2.pyi, *_pb2_grpc.py, *_pb2_grpc.pyi.
# Generated imports resolve as `from billing.v1 import common_pb2` because the
# include root is protos/. Output is deterministic: inputs are sorted, the
# previous generated files are removed first, and the hand-written package
# files are written byte-for-byte the same every time.
#
# Environment: PY (default .venv/bin/python) must have grpcio-tools and
# mypy-protobuf installed; its bin/ must hold protoc-gen-mypy{,_grpc}.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

OUT_DIR="$1"
PY="${PY:-.venv/bin/python}"
PROTO_ROOT=protos
PKG_DIR="$OUT_DIR/billing/v1"
BIN_DIR="$(dirname "$PY")"

for plugin in protoc-gen-mypy protoc-gen-mypy_grpc; do
  if [[ ! -x "$BIN_DIR/$plugin" ]]; then
    echo "error: $BIN_DIR/$plugin not found (pip install mypy-protobuf)" >&2
    exit 1
  fi
done

# Sorted, locale-independent list of inputs so output never depends on
# directory order.
mapfile -t PROTOS < <(cd "$PROTO_ROOT" && LC_ALL=C find billing -name '*.proto' -type f | LC_ALL=C sort)
if [[ ${#PROTOS[@]} -eq 0 ]]; then
  echo "error: no .proto files under $PROTO_ROOT/billing" >&2
  exit 1
fi

mkdir -p "$PKG_DIR"
# Drop stale output (for example from a deleted .proto); keep nothing else.
find "$OUT_DIR/billing" -type f \( -name '*_pb2.py' -o -name '*_pb2.pyi' \
  -o -name '*_pb2_grpc.py' -o -name '*_pb2_grpc.pyi' \) -delete

"$PY" -m grpc_tools.protoc \
  -I"$PROTO_ROOT" \
  --plugin=protoc-gen-mypy="$BIN_DIR/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$BIN_DIR/protoc-gen-mypy_grpc" \
  --python_out="$OUT_DIR" \
  --mypy_out="$OUT_DIR" \
  --grpc_python_out="$OUT_DIR" \
  --mypy_grpc_out="$OUT_DIR" \
  "${PROTOS[@]}"

cat > "$OUT_DIR/billing/__init__.py" <<'PY'
"""Generated gRPC client for the billing service (package billing.v1)."""
PY
cat > "$OUT_DIR/billing/v1/__init__.py" <<'PY'
"""Generated code for billing.v1. Do not edit: run `make gen`."""
PY
: > "$OUT_DIR/billing/py.typed"
: > "$OUT_DIR/billing/v1/py.typed"

echo "generated ${#PROTOS[@]} protos into $PKG_DIR"
