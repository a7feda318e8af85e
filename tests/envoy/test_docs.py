"""The docs stay true: README size, relative links and anchors, the two commands, and every reason
code and metric name in the source documented in docs/operations.md.

Standard library only, and nothing imported from the other test files: it reads files, it does not
start Envoy. The source is walked recursively and no source path is hard-coded, so the check holds
whatever folders the modules live in.
"""

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
OPERATIONS = ROOT / "docs" / "operations.md"

README_MAX_BYTES = 12_500

# Files that another branch adds: a link to one of them is accepted while it does not exist yet, and
# checked like any other once it does.
PENDING_FILES = {ROOT / "ARCHITECTURE.md"}

# A reason code is what a `code()` match arm returns: `Variant => "jwt_expired",`. Requiring the
# `=>` leaves out literals that merely share the prefix (the OIDC discovery member "jwks_uri").
REASON_CODE = re.compile(r'=>\s*"((?:jwt|jwks|path|rbac|discovery|dpop|introspection)_[a-z0-9_]+)"')
METRIC_NAME = re.compile(r'"(jwt_authz\.[a-z_.]+)"')

# Inline links and images, `[text](target)` / `![alt](target "title")`, and reference definitions.
INLINE_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
FENCE = re.compile(r"^(`{3,}|~{3,})([^\n]*)\n(.*?)^\1[ \t]*$", re.M | re.S)


def doc_files():
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    if (ROOT / "ARCHITECTURE.md").exists():
        files.append(ROOT / "ARCHITECTURE.md")
    files += sorted((ROOT / "docs").glob("*.md"))
    return files


def strip_code(text):
    """Markdown without fenced blocks and inline code spans: links inside them are not links."""
    text = FENCE.sub("", text)
    return re.sub(r"(`+).*?\1", "", text, flags=re.S)


def links(text):
    body = strip_code(text)
    return INLINE_LINK.findall(body) + REFERENCE_DEF.findall(body)


def is_relative(target):
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) and not target.startswith("//")


def github_anchor(heading):
    """GitHub's heading id: the rendered text, lower-cased, punctuation other than `-` and `_`
    dropped, each space a `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").strip().lower()
    text = "".join(c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(path):
    """Every heading id of a markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen = {}
    result = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = github_anchor(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def rust_sources():
    sources = sorted((ROOT / "src").rglob("*.rs"))
    assert sources, "no Rust sources found under src/"
    return sources


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; the limit is {README_MAX_BYTES}"


def test_anchor_rules():
    # The rules the link check relies on, on headings these docs really have.
    assert github_anchor("`jwtRules[]` — trusted issuers (Istio `RequestAuthentication.jwtRules`)") == (
        "jwtrules--trusted-issuers-istio-requestauthenticationjwtrules"
    )
    assert github_anchor("Addresses: what `source.ip` and `remote.ip` are") == (
        "addresses-what-sourceip-and-remoteip-are"
    )
    assert github_anchor("Hostile input, fuzzing, soak") == "hostile-input-fuzzing-soak"


def test_link_extraction_finds_links():
    # Guards the check below against a regex that finds nothing and so passes on anything.
    sample = "See [a](docs/a.md#x), ![i](img.png \"t\"), `[no](code.md)` and [web](https://e.x).\n[r]: ref.md\n"
    assert links(sample) == ["docs/a.md#x", "img.png", "https://e.x", "ref.md"]
    total = sum(len([t for t in links(f.read_text(encoding="utf-8")) if is_relative(t)]) for f in doc_files())
    assert total >= 20, f"only {total} relative links found in the docs: is the link regex broken?"


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    assert doc.exists(), f"{doc.relative_to(ROOT)} is missing"
    broken = []
    for target in links(doc.read_text(encoding="utf-8")):
        if not is_relative(target):
            continue
        file_part, _, fragment = target.partition("#")
        destination = (doc.parent / file_part).resolve() if file_part else doc
        if not destination.exists():
            if destination not in PENDING_FILES:
                broken.append(f"{target}: no such file")
            continue
        if fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(f"{target}: no heading with that anchor in {destination.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_two_commands():
    commands = []
    for match in FENCE.finditer(README.read_text(encoding="utf-8")):
        if match.group(2).strip() not in ("sh", "bash", "shell", "console"):
            continue
        for line in match.group(3).splitlines():
            command = line.split("#", 1)[0].strip()
            if command:
                commands.append(command)
    assert commands[:2] == ["make run", "make test"], f"first shell commands in README.md: {commands[:2]}"


def test_every_reason_code_is_documented():
    codes = set()
    for source in rust_sources():
        codes.update(REASON_CODE.findall(source.read_text(encoding="utf-8")))
    # The codes every deny path has: finding fewer means the regex no longer sees the code() arms.
    assert {"jwt_missing", "jwt_expired", "jwt_bad_base64", "rbac_access_denied", "jwks_fetch_failed"} <= codes
    assert len(codes) >= 25, f"only {len(codes)} reason codes found in src/: {sorted(codes)}"
    documented = OPERATIONS.read_text(encoding="utf-8")
    missing = sorted(code for code in codes if not re.search(rf"`{code}`", documented))
    assert not missing, f"reason codes not documented in docs/operations.md: {missing}"


def test_every_metric_is_documented():
    names = set()
    for source in rust_sources():
        names.update(METRIC_NAME.findall(source.read_text(encoding="utf-8")))
    assert "jwt_authz.allowed_total" in names and len(names) >= 10, f"metric names found in src/: {sorted(names)}"
    documented = OPERATIONS.read_text(encoding="utf-8")
    # Envoy's Prometheus endpoint turns the dots into underscores; either spelling documents it.
    missing = sorted(
        name for name in names if name not in documented and name.replace(".", "_") not in documented
    )
    assert not missing, f"metric names not documented in docs/operations.md: {missing}"
