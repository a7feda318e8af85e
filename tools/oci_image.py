"""Package dist/plugin.wasm as OCI images that Istio's WasmPlugin can pull, and push them with skopeo.

`build` writes an OCI image layout directory (https://github.com/opencontainers/image-spec,
image-layout.md) holding two images of the same plugin, tagged in its index.json:

  compat  the "compat" variant of the Wasm image spec: a standard OCI image whose single
          tar+gzip layer holds `plugin.wasm`. Every registry stores it, and Istio reads it.
  wasm    the Wasm artifact ("oci") variant: the module itself is a layer of media type
          application/vnd.module.wasm.content.layer.v1+wasm next to a runtime-config layer, as
          Istio's image fetcher expects (exactly two layers). Needs a registry that accepts
          custom media types.

Both are reproducible: the same plugin.wasm gives the same digests. No timestamps, users or file
modes leak in (the tar entry has a fixed mtime, uid/gid 0 and mode 0644; gzip carries no name or
time), and every JSON document is serialized with sorted keys and no whitespace.

`push` copies one of them to a registry with skopeo (registry I/O, auth and retries are its job)
and prints the digest and the `sha256` to put in the WasmPlugin.
"""

import argparse
import gzip
import hashlib
import ipaddress
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"

TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"
VARIANTS = ("compat", "wasm")
# The file name Istio looks for inside a compat image's layer.
PLUGIN_FILE = "plugin.wasm"
RUNTIME_CONFIG_FILE = "runtime-config.json"
ROOT_ID = "jwt-authz"
# The Proxy-Wasm ABI the Rust SDK exports (proxy_abi_version_0_2_1).
ABI_VERSION = "proxy_abi_version_0_2_1"


def canonical_json(document):
    """Stable bytes for a JSON document: the digest must not depend on dict order or spacing."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def sha256_digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def source_date_epoch():
    """The timestamp stored in the tar entry: SOURCE_DATE_EPOCH if set (reproducible-builds.org), else 0."""
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def deterministic_tar(name, data, mtime):
    """A tar archive of one regular file, identical for identical inputs."""
    buffer = io.BytesIO()
    # USTAR: no PAX headers (which could carry access times or other host details).
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        entry = tarfile.TarInfo(name)
        entry.size = len(data)
        entry.mtime = mtime
        entry.mode = 0o644
        entry.uid = entry.gid = 0
        entry.uname = entry.gname = ""
        entry.type = tarfile.REGTYPE
        archive.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


def deterministic_gzip(data):
    """gzip without a file name or timestamp in its header (mtime=0 means 'none' in RFC 1952)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=buffer, mode="wb", compresslevel=9, mtime=0) as stream:
        stream.write(data)
    return buffer.getvalue()


class Layout:
    """An OCI image layout directory being written: content-addressed blobs plus index.json."""

    def __init__(self, root):
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.manifests = []

    def add_blob(self, data, media_type, annotations=None):
        digest = sha256_digest(data)
        path = self.blobs / digest.split(":", 1)[1]
        if not path.exists():
            path.write_bytes(data)
        descriptor = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if annotations:
            descriptor["annotations"] = dict(annotations)
        return descriptor

    def add_manifest(self, manifest, tag):
        descriptor = self.add_blob(canonical_json(manifest), OCI_MANIFEST)
        self.manifests.append({**descriptor, "annotations": {REF_NAME: tag}})
        return descriptor

    def finish(self):
        (self.root / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.manifests}
        (self.root / "index.json").write_bytes(canonical_json(index))


def image_annotations(version):
    annotations = {TITLE: "jwt-authz", "org.opencontainers.image.description":
                   "Proxy-Wasm JWT authentication and authorization filter for Envoy and Istio"}
    if version:
        annotations["org.opencontainers.image.version"] = version
    return annotations


def add_compat_image(layout, wasm, version):
    """One tar+gzip layer with plugin.wasm, a minimal OCI image config; `module.wasm.image/variant:
    compat` as the compat spec asks for OCI layer media types."""
    tar = deterministic_tar(PLUGIN_FILE, wasm, source_date_epoch())
    layer = layout.add_blob(deterministic_gzip(tar), OCI_LAYER_TAR_GZIP)
    # GOARCH/GOOS spellings for a WASI module; no `created`, so the digest depends on content only.
    config = {
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar)]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": layout.add_blob(canonical_json(config), OCI_CONFIG),
        "layers": [layer],
        "annotations": {**image_annotations(version), "module.wasm.image/variant": "compat"},
    }
    return layout.add_manifest(manifest, "compat")


def add_wasm_artifact_image(layout, wasm, version):
    """The Wasm artifact variant as wasme pushed it and Istio's fetcher reads it: the runtime config
    is the manifest's config and also the first of exactly two layers; the module is the second."""
    runtime_config = {"type": "envoy_proxy", "abiVersions": [ABI_VERSION], "config": {"rootIds": [ROOT_ID]}}
    config = layout.add_blob(canonical_json(runtime_config), WASM_CONFIG, {TITLE: RUNTIME_CONFIG_FILE})
    module = layout.add_blob(wasm, WASM_LAYER, {TITLE: PLUGIN_FILE})
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [config, module],
        "annotations": {
            **image_annotations(version),
            "module.wasm.runtime/type": "envoy_proxy",
            "module.wasm.runtime/abi_version": ABI_VERSION,
        },
    }
    return layout.add_manifest(manifest, "wasm")


def build(wasm_path, out_dir, version=""):
    """Writes the layout (replacing any previous one); returns {variant: manifest digest}."""
    wasm = Path(wasm_path).read_bytes()
    if wasm[:4] != b"\0asm":
        raise SystemExit(f"{wasm_path} is not a WebAssembly module")
    out = Path(out_dir)
    # Build beside the target and swap it in, so a failed build never leaves a half-written layout.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    layout = Layout(staging)
    digests = {
        "compat": add_compat_image(layout, wasm, version)["digest"],
        "wasm": add_wasm_artifact_image(layout, wasm, version)["digest"],
    }
    layout.finish()
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)
    return digests


def manifest_digests(layout_dir):
    index = json.loads((Path(layout_dir) / "index.json").read_text())
    return {entry["annotations"][REF_NAME]: entry["digest"] for entry in index["manifests"]}


def push(layout_dir, variant, image, tls_verify=True, extra_args=()):
    """skopeo copy oci:<layout>:<variant> docker://<image>; returns the pushed manifest digest.

    --preserve-digests makes skopeo fail rather than rewrite (and so re-digest) the manifest.
    """
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    expected = manifest_digests(layout_dir).get(variant)
    if expected is None:
        raise SystemExit(f"{layout_dir} has no {variant!r} image: run `make image` first")
    with tempfile.TemporaryDirectory() as scratch:
        digest_file = Path(scratch) / "digest"
        command = ["skopeo", "copy", "--quiet", "--preserve-digests", f"--dest-tls-verify={str(tls_verify).lower()}",
                   "--digestfile", str(digest_file), *extra_args,
                   f"oci:{layout_dir}:{variant}", f"docker://{image}"]
        subprocess.run(command, check=True)
        pushed = digest_file.read_text().strip()
    if pushed != expected:
        raise SystemExit(f"registry reports digest {pushed}, but the image built is {expected}")
    return pushed


def registry_host(image):
    """The registry part of `image` (host[:port]), as Docker reads it: the first path segment when
    it has a dot or a colon or is localhost; otherwise Docker Hub."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def is_loopback(host):
    """localhost or 127.0.0.0/8 or ::1, with or without a port: Docker treats these registries as
    insecure by default (plain HTTP allowed), and so does `make push`. Nothing else is."""
    name = host
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def tls_verify_for(image, setting):
    """`auto`: verify TLS except for a loopback registry."""
    if setting == "auto":
        return not is_loopback(registry_host(image))
    return setting == "true"


def manifests(image, digest, plugin_config=None):
    """Ready-to-apply WasmPlugin and TrafficExtension (Istio 1.30) for the pushed image. The
    pluginConfig is the given JSON (valid YAML as it is), or a placeholder to replace."""
    url = f"oci://{repository(image)}@{digest}"
    sha = digest.split(":", 1)[1]
    config = json.dumps(plugin_config) if plugin_config is not None else \
        '{}  # replace with your configuration (jwt-authz convert prints one; jwt-authz check reads this file)'
    wasm_plugin = f"""apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: jwt-authz
  namespace: my-namespace
spec:
  selector:
    matchLabels:
      app: my-app
  url: {url}
  sha256: {sha}
  phase: AUTHN
  failStrategy: FAIL_CLOSE
  pluginConfig: {config}
"""
    traffic_extension = f"""apiVersion: extensions.istio.io/v1alpha1
kind: TrafficExtension
metadata:
  name: jwt-authz
  namespace: my-namespace
spec:
  selector:                  # or, for a waypoint or gateway: targetRefs: [{{kind: Gateway, name: ...}}]
    matchLabels:
      app: my-app
  phase: AUTHN
  wasm:
    url: {url}
    sha256: {sha}
    failStrategy: FAIL_CLOSE
    pluginConfig: {config}
"""
    return wasm_plugin, traffic_extension


def repository(image):
    """host/ns/name of host/ns/name:tag or host/ns/name@sha256:..."""
    if "@" in image:
        return image.split("@", 1)[0]
    last_slash = image.rfind("/")
    colon = image.rfind(":")
    return image[:colon] if colon > last_slash else image


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="write the OCI layout with both variants")
    build_parser.add_argument("--wasm", default="dist/plugin.wasm")
    build_parser.add_argument("--out", default="dist/oci")
    build_parser.add_argument("--version", default="", help="org.opencontainers.image.version annotation")
    push_parser = commands.add_parser("push", help="push one variant with skopeo")
    push_parser.add_argument("image", help="registry/namespace/name:tag")
    push_parser.add_argument("--layout", default="dist/oci")
    push_parser.add_argument("--variant", default="compat", choices=VARIANTS)
    push_parser.add_argument("--tls-verify", default="auto", choices=["auto", "true", "false"],
                             help="auto (the default): verify, except for a registry on loopback "
                                  "(localhost, 127.0.0.0/8, ::1), as Docker does")
    push_parser.add_argument("--plugin-config", help="a JSON plugin configuration to put in the printed manifests")
    push_parser.add_argument("skopeo_args", nargs="*", help="extra skopeo copy arguments (after --)")
    args = parser.parse_args(argv)

    if args.command == "build":
        digests = build(args.wasm, args.out, args.version)
        sha = hashlib.sha256(Path(args.wasm).read_bytes()).hexdigest()
        print(f"OCI layout {args.out} ({args.wasm}, sha256 {sha})")
        for variant, digest in digests.items():
            print(f"  {variant:7} {digest}")
        return 0

    tls_verify = tls_verify_for(args.image, args.tls_verify)
    if not tls_verify and args.tls_verify == "auto":
        print(f"{registry_host(args.image)} is on loopback: pushing without TLS verification (TLS_VERIFY=true to verify)")
    plugin_config = json.loads(Path(args.plugin_config).read_text()) if args.plugin_config else None
    digest = push(args.layout, args.variant, args.image, tls_verify, args.skopeo_args)
    print(f"pushed {args.image} ({args.variant} variant)")
    print(f"digest: {digest}")
    print("In the WasmPlugin (Istio checks sha256 against the image's manifest digest for oci:// URLs):")
    print(f"  url: oci://{repository(args.image)}@{digest}")
    print(f"  sha256: {digest.split(':', 1)[1]}")
    wasm_plugin, traffic_extension = manifests(args.image, digest, plugin_config)
    print("\n--- WasmPlugin (Istio 1.12 and later):\n" + wasm_plugin)
    print("--- TrafficExtension (Istio 1.30 and later; supersedes WasmPlugin):\n" + traffic_extension)
    return 0


if __name__ == "__main__":
    sys.exit(main())
