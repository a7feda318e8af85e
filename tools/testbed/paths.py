"""Where things are: the repository, its tools, the Envoy binary and the plugin under test."""

import os
from pathlib import Path

TOOLS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TOOLS_DIR.parent
ENVOY_BIN = Path(os.environ.get("ENVOY_BIN", REPO_ROOT / ".venv" / "bin" / "envoy"))
WASM_PATH = Path(os.environ.get("JWT_AUTHZ_WASM", REPO_ROOT / "dist" / "plugin.wasm"))
