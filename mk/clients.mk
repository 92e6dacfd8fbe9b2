# Client toolchains: the pinned code generators (used by mk/proto.mk) and the
# runtimes the generated clients are tested on (tests/clients). Included by the
# top-level Makefile, which defines PYTHON. Everything is installed behind a
# stamp file, so a second run installs nothing:
#
#   .tools/gen-protoc, .tools/gen-plugins   Python generators (pins in clients/python/requirements)
#   clients/typescript/node_modules         protoc-gen-es, the TypeScript runtime, tsc (package-lock.json)
#   Debian packages                         Go 1.19, protoc-gen-go{,-grpc} and the Go libraries they need
#   .tools/py-oldest, .tools/py-newest      the oldest and newest runtimes the Python client declares
#
#   make clients-install   all of the above

CLIENT_REQS := clients/python/requirements
TS_DIR      := clients/typescript
TS_STAMP    := $(TS_DIR)/node_modules/.installed
GO_STAMP    := .tools/debian-go.installed
GEN_TOOLS   := .tools/gen-protoc/.installed .tools/gen-plugins/.installed $(TS_STAMP) $(GO_STAMP)
CLIENT_RUNTIMES := .tools/py-oldest/.installed .tools/py-newest/.installed

# The oldest runtime venv runs on the oldest Python the client declares
# (requires-python), the newest on the newest Python here; either falls back to
# $(PYTHON) on a machine without it (the test prints which Python it used).
# pyenv's shims exist for versions that are installed but not active, so a
# candidate counts only if it starts.
find_python = $(firstword $(foreach p,$(1) $(wildcard $(shell pyenv root 2>/dev/null)/versions/$(2)*/bin/$(1)),	$(shell $(p) -c '' >/dev/null 2>&1 && echo $(p))))
PYTHON_oldest ?= $(or $(call find_python,python3.9,3.9),$(PYTHON))
PYTHON_newest ?= $(or $(call find_python,python3.13,3.13),$(PYTHON))

# Reinstall the client into the runtime venvs whenever the package changes.
CLIENT_PY_FILES := clients/python/pyproject.toml \
	$(shell find clients/python/billing clients/python/billing_client -type f \( -name '*.py' -o -name '*.pyi' -o -name py.typed \))

# Debian bookworm: Go 1.19 and, as Go sources for GOPATH mode (no module proxy
# needed), grpc-go 1.33.3, protobuf-go 1.28.1 and genproto (google.rpc details).
GO_DEBIAN_PACKAGES := golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev \
	golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: clients-install

clients-install: $(GEN_TOOLS) $(CLIENT_RUNTIMES)

.tools/gen-%/.installed: $(CLIENT_REQS)/gen-%.txt
	rm -rf $(@D)
	$(PYTHON) -m venv $(@D)
	$(@D)/bin/pip install --quiet --disable-pip-version-check -r $<
	@touch $@

# Exactly the pinned runtime first, then the client without its dependencies,
# then `pip check`: it fails if the client's declared ranges exclude the pins.
.tools/py-%/.installed: $(CLIENT_REQS)/runtime-%.txt $(CLIENT_PY_FILES)
	@test -x $(@D)/bin/python || $(PYTHON_$*) -m venv $(@D)
	$(@D)/bin/pip install --quiet --disable-pip-version-check -r $<
	$(@D)/bin/pip install --quiet --disable-pip-version-check --no-deps --force-reinstall ./clients/python
	@rm -rf clients/python/build
	$(@D)/bin/pip check
	@touch $@

$(TS_STAMP): $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	npm ci --prefix $(TS_DIR) --no-audit --no-fund
	@touch $@

$(GO_STAMP): mk/clients.mk
	@if ! dpkg -s $(GO_DEBIAN_PACKAGES) >/dev/null 2>&1; then \
	  echo "installing Debian packages: $(GO_DEBIAN_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
	    --no-install-recommends $(GO_DEBIAN_PACKAGES); \
	fi
	@mkdir -p $(@D) && touch $@
