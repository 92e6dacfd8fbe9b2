# Protobuf contract targets. Included by the top-level Makefile, which defines
# VENV, PY and the $(VENV)/.installed stamp (venv with grpcio-tools and
# mypy-protobuf). Run from the repository root.
#
#   make gen             regenerate clients/python/billing from protos/
#   make gen-check       fail if the committed generated code is stale
#   make buf-lint        buf lint (STANDARD + COMMENTS, see buf.yaml)
#   make buf-breaking    buf breaking (FILE) against the committed baseline
#   make proto-baseline  refresh the baseline; run when cutting a release
#   make proto-check     buf-lint + buf-breaking + gen-check (for CI)

BUF_VERSION   := 1.75.0
BUF           := .tools/node_modules/.bin/buf
BUF_BASELINE  := protos/baseline/billing_v1.binpb
PROTO_FILES   := $(sort $(shell find protos -name '*.proto' -type f))
GEN_SCRIPT    := scripts/gen_protos.sh
CLIENT_DIR    := clients/python

.PHONY: gen gen-check buf-lint buf-breaking proto-baseline proto-check buf

# buf from npm: a pinned native binary, works offline once installed.
$(BUF):
	npm install --prefix .tools --no-save --no-audit --no-fund @bufbuild/buf@$(BUF_VERSION)
	@test -x $@ || { echo "error: $@ was not installed" >&2; exit 1; }

buf: $(BUF)

gen: $(VENV)/.installed
	PY=$(PY) $(GEN_SCRIPT) $(CLIENT_DIR)

gen-check: $(VENV)/.installed
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	if ! PY=$(PY) $(GEN_SCRIPT) "$$tmp/out" >"$$tmp/log" 2>&1; then \
	  cat "$$tmp/log" >&2; echo "gen-check: code generation failed" >&2; exit 1; \
	fi && \
	if diff -r -x __pycache__ "$$tmp/out/billing" $(CLIENT_DIR)/billing; then \
	  echo "generated code is up to date"; \
	else \
	  echo "generated code is stale: run make gen" >&2; exit 1; \
	fi

buf-lint: $(BUF)
	$(BUF) lint

buf-breaking: $(BUF)
	$(BUF) breaking --against $(BUF_BASELINE)

# The baseline is the contract as released; buf-breaking compares against it.
# Source info (comments, line numbers) is left out so doc-only edits don't
# churn the binary file.
proto-baseline: $(BUF) $(PROTO_FILES)
	$(BUF) lint
	@mkdir -p $(dir $(BUF_BASELINE))
	$(BUF) build --exclude-source-info -o $(BUF_BASELINE)
	@echo "wrote $(BUF_BASELINE); commit it with the release"

proto-check: buf-lint buf-breaking gen-check
