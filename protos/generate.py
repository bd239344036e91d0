"""Regenerate the Python code of seqrec's protobuf / gRPC API from the .proto files.

Usage::

    python protos/generate.py            # write beside the .proto files (in place)
    python protos/generate.py --out DIR  # write into DIR instead (the drift test uses this)

For every ``protos/seqrec/proto/v1/<name>.proto`` it writes ``<name>_pb2.py`` (messages),
``<name>_pb2.pyi`` (message type stubs), ``<name>_pb2_grpc.py`` (service stubs and servicers)
and ``<name>_pb2_grpc.pyi`` (service type stubs, by mypy-protobuf's ``protoc-gen-mypy_grpc``).
The proto path equals the import path, so the code imports as ``from seqrec.proto.v1 import
common_pb2``. Written in place, generated files whose .proto is gone are removed.

Needs grpcio-tools and mypy-protobuf (``pip install -e '.[dev]'``). The output is deterministic
for given versions of both: the drift test (tests/test_protos.py) compares it byte for byte with
the checked-in files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

#: The include root: .proto files live under it at their import path (seqrec/proto/v1/...).
PROTO_ROOT = Path(__file__).resolve().parent
#: File-name endings of everything this script generates.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
#: The mypy-protobuf plugin that writes the service type stubs.
MYPY_GRPC_PLUGIN = "protoc-gen-mypy_grpc"


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """Return the .proto files under ``root/seqrec``, relative to ``root``, sorted."""
    return sorted(p.relative_to(root) for p in (root / "seqrec").rglob("*.proto"))


def generated_files(root: Path) -> list[Path]:
    """Return the generated files under ``root/seqrec``, relative to ``root``, sorted."""
    base = root / "seqrec"
    if not base.is_dir():
        return []
    return sorted(
        p.relative_to(root) for p in base.rglob("*") if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    )


def expected_outputs(proto: Path) -> list[Path]:
    """Return the generated files (relative paths) that belong to one relative .proto path."""
    stem = proto.with_suffix("")
    return [stem.with_name(stem.name + suffix) for suffix in GENERATED_SUFFIXES]


def find_mypy_grpc_plugin() -> Path | None:
    """Locate protoc-gen-mypy_grpc, preferring the one installed beside this Python."""
    beside = Path(sys.executable).parent / MYPY_GRPC_PLUGIN
    if beside.is_file():
        return beside
    found = shutil.which(MYPY_GRPC_PLUGIN)
    return Path(found) if found else None


def well_known_types_include() -> Path:
    """Return grpc_tools' bundled include folder (google/protobuf/*.proto)."""
    return Path(str(resources.files("grpc_tools") / "_proto"))


def run_protoc(out_dir: Path, root: Path = PROTO_ROOT) -> list[Path]:
    """Generate the code of every .proto under ``root`` into ``out_dir``; return the files written.

    Raises RuntimeError when the mypy-protobuf plugin is missing or protoc fails.
    """
    plugin = find_mypy_grpc_plugin()
    if plugin is None:
        raise RuntimeError(f"{MYPY_GRPC_PLUGIN} not found; install mypy-protobuf (pip install -e '.[dev]')")
    protos = proto_files(root)
    if not protos:
        raise RuntimeError(f"no .proto files under {root / 'seqrec'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = str(out_dir)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={root}",
        f"--proto_path={well_known_types_include()}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin={MYPY_GRPC_PLUGIN}={plugin}",
        f"--mypy_grpc_out={out}",
        *(str(root / p) for p in protos),
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    written = generated_files(out_dir)
    missing = [p for proto in protos for p in expected_outputs(proto) if p not in written]
    if missing:
        raise RuntimeError(f"protoc did not write: {', '.join(map(str, missing))}")
    return written


def generate_in_place(root: Path = PROTO_ROOT) -> tuple[list[Path], list[Path]]:
    """Regenerate beside the .proto files; return (files changed, stale files removed).

    Unchanged files are left untouched, so their modification times survive.
    """
    with tempfile.TemporaryDirectory(prefix="seqrec-protos-") as tmp:
        fresh = run_protoc(Path(tmp), root)
        changed: list[Path] = []
        for rel in fresh:
            data = (Path(tmp) / rel).read_bytes()
            target = root / rel
            if not target.is_file() or target.read_bytes() != data:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                changed.append(rel)
    removed = [rel for rel in generated_files(root) if rel not in fresh]
    for rel in removed:
        (root / rel).unlink()
    return changed, removed


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write into this folder instead of beside the .proto files",
    )
    args = parser.parse_args(argv)
    try:
        if args.out is not None:
            written = run_protoc(args.out.resolve())
            print(f"wrote {len(written)} files into {args.out}")
        else:
            changed, removed = generate_in_place()
            for rel in changed:
                print(f"updated {rel}")
            for rel in removed:
                print(f"removed stale {rel}")
            print(f"{len(changed)} updated, {len(removed)} removed")
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
