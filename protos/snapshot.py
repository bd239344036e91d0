"""Refresh protos/api_snapshot.binpb, the released API that `buf breaking` compares protos/ against.

Usage::

    python protos/snapshot.py    # after a release, or after a breaking change made on purpose

The snapshot is a buf image (a FileDescriptorSet without source info: comments may change freely) of every
.proto under protos/. It changes only when this is run; additive changes pass the check without it.
Needs the pinned buf CLI: ``npm ci --prefix protos``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
SNAPSHOT = PROTO_ROOT / "api_snapshot.binpb"
LINT_EXCEPTIONS = PROTO_ROOT / "lint_exceptions.txt"


def buf_binary() -> str | None:
    """The pinned buf under protos/node_modules, else one on PATH, else None."""
    local = PROTO_ROOT / "node_modules" / ".bin" / "buf"
    return str(local) if local.exists() else shutil.which("buf")


def main() -> int:
    buf = buf_binary()
    if buf is None:
        sys.exit("buf not found: run `npm ci --prefix protos` first")
    subprocess.run([buf, "build", "--exclude-source-info", "-o", str(SNAPSHOT)], cwd=PROTO_ROOT, check=True)
    print(f"wrote {SNAPSHOT.relative_to(PROTO_ROOT.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
