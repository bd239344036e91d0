"""Model bundles: the only thing the trainer hands to serving.

A bundle is a directory `<out>/<version>/` holding the ONNX encoder, item vectors, vocabulary,
popularity, metadata, user histories, metrics and the training report, plus `manifest.json` (typed:
`shared/manifest.py`) with the sha256 of every file. Nothing in it is pickled: arrays are `.npy` read with
`allow_pickle=False`, everything else is JSON or ONNX.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.shared.manifest import FORMAT_VERSION, Manifest, ManifestError
from seqrec.shared.vocab import ItemVocab

MANIFEST = "manifest.json"
ENCODER = "encoder.onnx"
ITEM_VECTORS = "item_vectors.npy"
VOCAB = "vocab.json"
POPULARITY = "popularity.npy"
ITEMS = "items.jsonl"
HISTORIES = "histories.jsonl"
HELDOUT = "heldout.jsonl"  # the selection run's held-out last item of each user and its rank (the quality gate's)
METRICS = "metrics.json"
REPORT_HTML = "report.html"  # the training report, one self-contained page
# Hybrid bundles only:
TEXT_EMBEDDINGS = "text_embeddings.npy"  # [n_indices, 384] MiniLM embeddings of item text (zero rows: no text)
ITEM_ID_PARTS = "item_id_parts.npy"  # [n_indices, id_width]: what each item's id contributes to its row
ITEM_FLAGS = "item_flags.npy"  # uint8 [n_indices]: scoring.NEW_ITEM | scoring.UNSEEN
TEXT_HEAD = "text_head.npy"  # [385 + 1, model + 1]: how text enters a row (scoring.TextHead)
ITEM_TO_ITEM = "item_to_item.npy"  # [n_indices, d] unit rows: inner product = item_to_item similarity


class BundleError(RuntimeError):
    """A bundle that is missing, tampered with, truncated or of an unsupported format."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def new_version(now: dt.datetime | None = None) -> str:
    """Sortable, unique bundle version such as `20261127T044512Z-3f9a`."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(2)}"


class BundleWriter:
    """Collects files in a staging directory, then publishes them atomically with a manifest."""

    def __init__(self, out_dir: Path, version: str | None = None):
        self.version = version or new_version()
        self.out_dir = Path(out_dir)
        self.final_dir = self.out_dir / self.version
        if self.final_dir.exists():
            raise BundleError(f"{self.final_dir} already exists")
        self.dir = self.out_dir / f".{self.version}.partial"
        self.dir.mkdir(parents=True, exist_ok=False)

    def path(self, name: str) -> Path:
        return self.dir / name

    def write_json(self, name: str, payload: Any) -> Path:
        path = self.path(name)
        path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=_json_default))
        return path

    def write_jsonl(self, name: str, rows: Iterator[dict[str, Any]]) -> Path:
        path = self.path(name)
        with open(path, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
        return path

    def write_array(self, name: str, array: np.ndarray) -> Path:
        path = self.path(name)
        np.save(path, np.ascontiguousarray(array), allow_pickle=False)
        return path

    def commit(self, manifest: Manifest) -> Path:
        """Hash every staged file into the manifest and move the bundle into place."""
        files = {}
        for path in sorted(p for p in self.dir.iterdir() if p.is_file() and p.name != MANIFEST):
            files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        full = dataclasses.replace(manifest, bundle_version=self.version, files=files, format_version=FORMAT_VERSION,
                                   created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        (self.dir / MANIFEST).write_text(json.dumps(full.to_dict(), indent=2, default=_json_default))
        os.replace(self.dir, self.final_dir)
        return self.final_dir

    def abort(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk; arrays and tables are read on demand."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Bundle:
        """Read the manifest and (by default) check every file's size and sha256."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{path}: not a bundle (no {MANIFEST})")
        try:
            raw = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{manifest_path}: unreadable manifest ({exc})") from exc
        try:
            manifest = Manifest.from_dict(raw if isinstance(raw, dict) else {})
        except ManifestError as exc:
            raise BundleError(f"{path}: {exc}") from exc
        bundle = cls(path=path, manifest=manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        files = self.manifest.files
        for required in (ENCODER, ITEM_VECTORS, VOCAB):
            if required not in files:
                raise BundleError(f"{self.path}: manifest lists no {required}")
        for name, entry in files.items():
            file = self.path / name
            if Path(name).name != name:
                raise BundleError(f"{self.path}: manifest names a file outside the bundle: {name!r}")
            if not file.is_file():
                raise BundleError(f"{self.path}: {name} is missing")
            if file.stat().st_size != entry["bytes"]:
                raise BundleError(f"{self.path}: {name} has {file.stat().st_size} bytes, manifest says "
                                  f"{entry['bytes']} (truncated or replaced)")
            if sha256_file(file) != entry["sha256"]:
                raise BundleError(f"{self.path}: {name} does not match its sha256 (tampered or corrupted)")

    @property
    def version(self) -> str:
        return self.manifest.bundle_version

    @property
    def max_len(self) -> int:
        return self.manifest.max_len

    @property
    def mask_index(self) -> int:
        return self.manifest.mask_index

    @property
    def pad_index(self) -> int:
        return self.manifest.pad_index

    @property
    def top_k(self) -> int:
        return self.manifest.top_k

    def file(self, name: str) -> Path:
        if name not in self.manifest.files:
            raise BundleError(f"{self.path}: bundle has no {name}")
        return self.path / name

    def has(self, name: str) -> bool:
        return name in self.manifest.files

    def vocab(self) -> ItemVocab:
        return ItemVocab.load(self.file(VOCAB))

    def item_vectors(self) -> np.ndarray:
        return np.load(self.file(ITEM_VECTORS), allow_pickle=False)

    def array(self, name: str) -> np.ndarray:
        return np.load(self.file(name), allow_pickle=False)

    def item_flags(self) -> np.ndarray | None:
        """uint8 [n_indices] NEW_ITEM | UNSEEN bits (hybrid bundles; None for id-only ones)."""
        return self.array(ITEM_FLAGS) if self.has(ITEM_FLAGS) else None

    @property
    def hybrid(self) -> bool:
        """Whether item text is part of the model (the bundle can then embed brand-new items)."""
        return self.manifest.hybrid and self.has(TEXT_HEAD)

    def popularity(self) -> np.ndarray:
        return np.load(self.file(POPULARITY), allow_pickle=False)

    def metrics(self) -> dict[str, Any]:
        return json.loads(self.file(METRICS).read_text())

    def iter_jsonl(self, name: str) -> Iterator[dict[str, Any]]:
        with open(self.file(name), encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
