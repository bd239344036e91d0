"""Lint and breaking-change checks of the public API with the pinned buf CLI (protos/buf.yaml).

- lint: STANDARD rules; the findings in protos/lint_exceptions.txt (names the API shipped with) are the only
  ones allowed, and each of them must still occur (a fixed one is deleted from the list);
- breaking: FILE rules against protos/api_snapshot.binpb, the released API (`python protos/snapshot.py`
  refreshes it, on purpose only).

Each check is also run on a changed copy of protos/ to show it fails where it should.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROTOS = REPO / "protos"
COMMON = Path("seqrec/proto/v1/common.proto")
RANKER = Path("seqrec/proto/v1/ranker.proto")


def _buf() -> str:
    local = PROTOS / "node_modules" / ".bin" / "buf"
    found = str(local) if local.exists() else shutil.which("buf")
    if found is None:
        pytest.skip("the buf CLI is not installed; .ci/run installs it with `npm ci --prefix protos`")
    return found


def run_buf(*args: str, cwd: Path = PROTOS) -> subprocess.CompletedProcess:
    return subprocess.run([_buf(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def lint_findings(root: Path = PROTOS) -> Counter:
    """buf lint's findings as `path  RULE  message` lines (line numbers left out: edits above do not shift them)."""
    proc = run_buf("lint", "--error-format", "json", cwd=root)
    assert proc.returncode in (0, 100), proc.stderr  # 100: findings were reported
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return Counter(f"{r['path']}  {r['type']}  {r['message']}" for r in rows)


def listed_exceptions() -> Counter:
    lines = (PROTOS / "lint_exceptions.txt").read_text().splitlines()
    return Counter(line for line in lines if line.strip() and not line.startswith("#"))


@pytest.fixture
def protos_copy(tmp_path: Path) -> Path:
    """protos/ without its tools and generated code: buf.yaml, the snapshot and the .proto files."""
    root = tmp_path / "protos"
    shutil.copytree(PROTOS, root, ignore=shutil.ignore_patterns("node_modules", "*.py", "*.pyi", "__pycache__"))
    return root


def test_lint_finds_only_the_listed_exceptions():
    found, listed = lint_findings(), listed_exceptions()
    new = found - listed
    gone = listed - found
    assert not new, "new buf lint findings (fix the .proto, see protos/buf.yaml):\n" + "\n".join(new.elements())
    assert not gone, "listed lint exceptions that no longer occur (delete them from protos/lint_exceptions.txt):\n" \
        + "\n".join(gone.elements())


def test_lint_reports_a_new_rpc_named_against_the_rules(protos_copy: Path):
    ranker = protos_copy / RANKER
    text = ranker.read_text()
    service = "service RankerService {"
    assert service in text
    ranker.write_text(text.replace(service, service + "\n  rpc Explain(GapRequest) returns (ModelInfo);", 1))
    new = lint_findings(protos_copy) - listed_exceptions()
    rules = {line.split("  ")[1] for line in new}
    assert {"RPC_REQUEST_STANDARD_NAME", "RPC_RESPONSE_STANDARD_NAME"} <= rules, new


def test_the_api_has_no_breaking_change_against_the_snapshot():
    proc = run_buf("breaking", "--against", "api_snapshot.binpb")
    assert proc.returncode == 0, (
        "protos/ breaks the released API (or refresh the snapshot on purpose: python protos/snapshot.py):\n"
        + proc.stdout + proc.stderr)


def test_an_additive_field_is_not_breaking(protos_copy: Path):
    common = protos_copy / COMMON
    text = common.read_text()
    assert "message ModelInfo {" in text
    common.write_text(text.replace("message ModelInfo {", "message ModelInfo {\n  string added_later = 999;", 1))
    proc = run_buf("breaking", "--against", "api_snapshot.binpb", cwd=protos_copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_removing_or_renumbering_a_field_is_breaking(protos_copy: Path):
    common = protos_copy / COMMON
    text = common.read_text()
    removed = "  optional double gte = 1;\n"
    assert removed in text
    common.write_text(text.replace(removed, "", 1).replace("optional double gt = 2;", "optional double gt = 7;", 1))
    proc = run_buf("breaking", "--against", "api_snapshot.binpb", "--error-format", "json", cwd=protos_copy)
    assert proc.returncode != 0
    rules = {json.loads(line)["type"] for line in proc.stdout.splitlines() if line.strip()}
    assert "FIELD_NO_DELETE" in rules, rules


def test_the_snapshot_is_a_buf_image_of_every_proto_file():
    from google.protobuf import descriptor_pb2

    image = descriptor_pb2.FileDescriptorSet.FromString((PROTOS / "api_snapshot.binpb").read_bytes())
    names = {f.name for f in image.file}
    on_disk = {str(p.relative_to(PROTOS)) for p in (PROTOS / "seqrec").rglob("*.proto")}
    assert on_disk <= names, on_disk - names
