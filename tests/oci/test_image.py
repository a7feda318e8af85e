"""OCI images of dist/plugin.wasm: reproducible builds, and a push/pull round trip through a real
registry (Debian's docker-registry on loopback) with skopeo, checked the way Istio reads them."""

import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import oci_image  # tools/oci_image.py: pytest.ini puts tools/ on the import path
from testbed.net import free_port
from testbed.paths import REPO_ROOT, WASM_PATH as WASM

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def tool(name):
    path = shutil.which(name)
    assert path, f"{name} is not installed: `make test` installs it (apt package {name})"
    return path


@pytest.fixture(scope="module")
def wasm():
    assert WASM.exists(), f"{WASM} is missing: run `make build`"
    return WASM.read_bytes()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """docker-registry on 127.0.0.1 with a throwaway config and storage; yields host:port."""
    workdir = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {workdir / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    log = open(workdir / "registry.log", "wb")
    process = subprocess.Popen([tool("docker-registry"), "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {(workdir / 'registry.log').read_text()}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def skopeo(*args):
    result = subprocess.run([tool("skopeo"), *args], capture_output=True, text=True)
    assert result.returncode == 0, f"skopeo {' '.join(args)}: {result.stderr}"
    return result.stdout


def pull(image, variant_dir):
    """skopeo copy docker://image to a local OCI layout; returns (manifest digest, manifest bytes, blob reader)."""
    skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{image}", f"oci:{variant_dir}:pulled")
    index = json.loads((variant_dir / "index.json").read_text())
    digest = next(m["digest"] for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "pulled")

    def blob(digest):
        return (variant_dir / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    return digest, blob(digest), blob


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compat_module(manifest, blob):
    """What Istio's image fetcher takes from a compat image: the last layer must be OCI tar+gzip,
    and the module is its entry whose base name is plugin.wasm."""
    layer = manifest["layers"][-1]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layer["digest"])))) as archive:
        entries = archive.getmembers()
        plugin = [entry for entry in entries if Path(entry.name).name == "plugin.wasm"]
        assert len(entries) == 1 and len(plugin) == 1, [entry.name for entry in entries]
        return archive.extractfile(plugin[0]).read(), plugin[0]


def artifact_module(manifest, blob):
    """What Istio takes from the Wasm artifact variant: exactly two layers, the module being the one
    of media type application/vnd.module.wasm.content.layer.v1+wasm, stored raw."""
    assert len(manifest["layers"]) == 2
    wasm_layers = [layer for layer in manifest["layers"] if layer["mediaType"] == oci_image.WASM_LAYER]
    assert len(wasm_layers) == 1
    return blob(wasm_layers[0]["digest"])


# --- Reproducibility ------------------------------------------------------------------------------

def test_same_input_gives_the_same_digests_and_bytes(tmp_path, wasm):
    first = oci_image.build(WASM, tmp_path / "first")
    second = oci_image.build(WASM, tmp_path / "second")
    assert first == second
    assert set(first) == {"compat", "wasm"}

    def files(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert files(tmp_path / "first") == files(tmp_path / "second")
    # A rebuild into the same directory replaces it cleanly and changes nothing.
    assert oci_image.build(WASM, tmp_path / "first") == first
    assert oci_image.manifest_digests(tmp_path / "first") == first


def test_different_module_gives_different_digests(tmp_path, wasm):
    other = tmp_path / "other.wasm"
    other.write_bytes(wasm + b"\0")
    assert oci_image.build(other, tmp_path / "other").keys() == {"compat", "wasm"}
    mine = oci_image.build(WASM, tmp_path / "mine")
    theirs = oci_image.manifest_digests(tmp_path / "other")
    assert all(mine[variant] != theirs[variant] for variant in mine)


def test_layer_carries_no_time_owner_or_host_detail(tmp_path, wasm):
    digests = oci_image.build(WASM, tmp_path / "oci")
    layout = tmp_path / "oci"

    def blob(digest):
        return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    manifest = json.loads(blob(digests["compat"]))
    layer = blob(manifest["layers"][0]["digest"])
    assert layer[:2] == b"\x1f\x8b" and layer[4:8] == b"\0\0\0\0", "gzip header must carry no mtime"
    assert layer[3] & 0x08 == 0, "gzip header must carry no file name"
    module, entry = compat_module(manifest, blob)
    assert module == wasm
    assert (entry.name, entry.mtime, entry.uid, entry.gid, entry.uname, entry.gname, entry.mode) == \
        ("plugin.wasm", 0, 0, 0, "", "", 0o644)
    config = json.loads(blob(manifest["config"]["digest"]))
    assert "created" not in config and "history" not in config
    assert config["rootfs"]["diff_ids"] == [sha256(gzip.decompress(layer))]


def test_not_a_wasm_module_is_refused(tmp_path):
    bogus = tmp_path / "bogus.wasm"
    bogus.write_bytes(b"MZ not wasm")
    with pytest.raises(SystemExit, match="not a WebAssembly module"):
        oci_image.build(bogus, tmp_path / "oci")
    assert not (tmp_path / "oci").exists()


# --- Registry round trip ----------------------------------------------------------------------------

def make_push(image, variant, layout, *extra):
    """`make push` as a user runs it (OCI_LAYOUT points at a scratch layout). No TLS_VERIFY: a
    registry on loopback is pushed to without TLS verification by default, as Docker does."""
    result = subprocess.run(
        ["make", "--no-print-directory", "push", f"IMAGE={image}", f"VARIANT={variant}", f"OCI_LAYOUT={layout}",
         *extra],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("variant", ["compat", "wasm"])
def test_push_then_pull_back(registry, tmp_path, wasm, variant):
    image = f"{registry}/demo/jwt-authz:test-{variant}"
    output = make_push(image, variant, tmp_path / "oci", "CONFIG=examples/envoy/plugin-config.json")
    assert "is on loopback: pushing without TLS verification" in output
    local = oci_image.manifest_digests(tmp_path / "oci")[variant]
    digest = re.search(r"^digest: (sha256:[0-9a-f]{64})$", output, re.M).group(1)
    wasm_plugin_sha = re.search(r"^  sha256: ([0-9a-f]{64})$", output, re.M).group(1)
    assert digest == local and wasm_plugin_sha == local.split(":", 1)[1]
    assert f"url: oci://{registry}/demo/jwt-authz@{digest}" in output

    # The registry serves the very manifest that was built: same bytes, same digest.
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{image}").encode()
    assert sha256(raw) == digest
    pulled_digest, manifest_bytes, blob = pull(image, tmp_path / "pulled")
    assert pulled_digest == digest and sha256(manifest_bytes) == digest
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == OCI_MANIFEST and manifest["schemaVersion"] == 2
    if variant == "compat":
        assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
        assert [layer["mediaType"] for layer in manifest["layers"]] == ["application/vnd.oci.image.layer.v1.tar+gzip"]
        assert manifest["annotations"]["module.wasm.image/variant"] == "compat"
        # (skopeo's non-raw inspect reads image configs, so only for this variant.)
        remote = skopeo("inspect", "--tls-verify=false", "--format", "{{.Digest}}", f"docker://{image}").strip()
        assert remote == digest
        module, _ = compat_module(manifest, blob)
    else:
        assert manifest["config"]["mediaType"] == oci_image.WASM_CONFIG
        assert [layer["mediaType"] for layer in manifest["layers"]] == [oci_image.WASM_CONFIG, oci_image.WASM_LAYER]
        runtime = json.loads(blob(manifest["config"]["digest"]))
        assert runtime == {"type": "envoy_proxy", "abiVersions": ["proxy_abi_version_0_2_1"],
                           "config": {"rootIds": ["jwt-authz"]}}
        module = artifact_module(manifest, blob)
    assert module == wasm, "the module pulled back differs from dist/plugin.wasm"

    # The printed WasmPlugin and TrafficExtension are ready to apply: `jwt-authz check` accepts both.
    for kind in ("WasmPlugin", "TrafficExtension"):
        start = output.index(f"--- {kind} ")
        manifest = output[output.index("\n", start) + 1:]
        manifest = manifest[:manifest.index("\n--- ")] if "\n--- " in manifest else manifest
        assert f"kind: {kind}" in manifest and f"sha256: {digest.split(':', 1)[1]}" in manifest
        path = tmp_path / f"{kind}.yaml"
        path.write_text(manifest)
        checked = subprocess.run([str(REPO_ROOT / "dist" / "jwt-authz"), "check", str(path)],
                                 capture_output=True, text=True)
        assert checked.returncode == 0 and ": ok" in checked.stdout, checked.stdout + checked.stderr


def test_a_registry_off_loopback_is_verified_by_default():
    assert oci_image.tls_verify_for("registry.example.com/shop/jwt-authz:1", "auto")
    assert oci_image.tls_verify_for("10.0.0.7:5000/jwt-authz:1", "auto")
    assert oci_image.tls_verify_for("myorg/jwt-authz:1", "auto")  # Docker Hub
    assert oci_image.tls_verify_for("localhost.example.com/jwt-authz:1", "auto")
    for loopback in ("localhost:5000/a:1", "127.0.0.1:5000/a:1", "127.3.2.1/a:1", "[::1]:5000/a:1"):
        assert not oci_image.tls_verify_for(loopback, "auto"), loopback
        assert oci_image.tls_verify_for(loopback, "true"), loopback


def test_push_needs_an_image_name():
    result = subprocess.run(["make", "--no-print-directory", "push"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert "usage: make push IMAGE=" in result.stdout + result.stderr
