# Protobuf contract targets. Included by the top-level Makefile after
# mk/clients.mk, which installs the pinned code generators ($(GEN_TOOLS)).
# Run from the repository root.
#
#   make gen             regenerate clients/{python,typescript,go} from protos/ (buf.gen.yaml)
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
# The generated trees, relative to the root that $(GEN_SCRIPT) writes to.
GEN_TREES     := clients/python/billing clients/typescript/src/gen clients/go/billing

.PHONY: gen gen-check buf-lint buf-breaking proto-baseline proto-check buf

# buf from npm: a pinned native binary, works offline once installed.
$(BUF):
	npm install --prefix .tools --no-save --no-audit --no-fund @bufbuild/buf@$(BUF_VERSION)
	@test -x $@ || { echo "error: $@ was not installed" >&2; exit 1; }

buf: $(BUF)

gen: $(BUF) $(GEN_TOOLS)
	BUF=$(BUF) $(GEN_SCRIPT) .

gen-check: $(BUF) $(GEN_TOOLS)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	if ! BUF=$(BUF) $(GEN_SCRIPT) "$$tmp" >"$$tmp/log" 2>&1; then \
	  cat "$$tmp/log" >&2; echo "gen-check: code generation failed" >&2; exit 1; \
	fi && \
	stale=0 && for tree in $(GEN_TREES); do \
	  diff -r -x __pycache__ "$$tmp/$$tree" "$$tree" || stale=1; \
	done && \
	if [ $$stale = 0 ]; then echo "generated code is up to date"; \
	else echo "generated code is stale: run make gen" >&2; exit 1; fi

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
