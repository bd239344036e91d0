"""The bundle registry: the LIVE pointer, the publication history, rollback, validation and locking.

The stores are the loader's business (tests/test_hot_swap.py and tests/test_trainer_service.py
publish into a real Redis and Milvus); here the loader records what it was asked to load, so
the tests can check the registry's own promises: nothing moves unless loading succeeded.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from pathlib import Path

import pytest

from seqrec.shared.bundle import BundleError
from seqrec.shared.registry import (
    LIVE_FILE,
    PUBLISHED_FILE,
    BundleRegistry,
    InvalidVersion,
    NothingToRollBack,
    RegistryError,
    VersionNotFound,
    resolve_bundle,
)


class Recorder:
    def __init__(self) -> None:
        self.loaded: list[str] = []

    def __call__(self, path: Path) -> None:
        self.loaded.append(path.name)


@pytest.fixture()
def root(tmp_path: Path, trained_bundle, cold_bundle) -> tuple[Path, str, str]:
    """A bundle root holding two versions, neither published."""
    first, second = (shutil.copytree(p, tmp_path / p.name).name for p in (trained_bundle[0], cold_bundle[0]))
    return tmp_path, first, second


def test_publish_loads_then_moves_the_pointer(root):
    path, first, second = root
    registry, load = BundleRegistry(path), Recorder()
    assert registry.live_version() == "" and registry.history() == []
    with pytest.raises(BundleError, match="LIVE"):
        resolve_bundle(path)
    assert registry.publish(path / first, load) == first
    assert registry.publish(path / first, load) == first  # again: reloaded, history unchanged
    assert registry.publish(path / second, load) == second
    assert load.loaded == [first, first, second]
    assert registry.live_version() == second == (path / LIVE_FILE).read_text().strip()
    assert registry.history() == [first, second] == json.loads((path / PUBLISHED_FILE).read_text())
    assert resolve_bundle(path) == path / second and resolve_bundle(path / first) == path / first
    assert [b.version for b in registry.versions()] == sorted([first, second], reverse=True)


def test_a_failed_load_leaves_the_live_version_alone(root):
    path, first, second = root
    registry = BundleRegistry(path)
    registry.publish(path / first, Recorder())

    def broken(bundle: Path) -> None:
        raise ConnectionError("milvus is down")

    with pytest.raises(ConnectionError):
        registry.publish(path / second, broken)
    assert registry.live_version() == first and registry.history() == [first]


def test_a_corrupted_bundle_is_refused_before_any_store_is_touched(root):
    path, first, _ = root
    (path / first / "vocab.json").write_text("[]")
    load = Recorder()
    with pytest.raises(BundleError, match="vocab.json"):
        BundleRegistry(path).publish(path / first, load)
    assert load.loaded == [] and BundleRegistry(path).live_version() == ""


def test_rollback_pops_the_history_and_a_named_version_is_published(root):
    path, first, second = root
    registry, load = BundleRegistry(path), Recorder()
    registry.publish(path / first, load)
    with pytest.raises(NothingToRollBack, match="no earlier published version"):
        registry.rollback(load)
    registry.publish(path / second, load)
    assert registry.rollback(load) == first  # the stores are loaded again: collections may be gone
    assert load.loaded[-1] == first and registry.live_version() == first and registry.history() == [first]
    assert registry.rollback(load, second) == second
    assert registry.history() == [first, second] and registry.live_version() == second


def test_versions_are_plain_names_inside_the_root(root, tmp_path_factory):
    path, first, _ = root
    registry = BundleRegistry(path)
    for bad, error in (("", InvalidVersion), ("  ", InvalidVersion), ("../etc", InvalidVersion),
                       (".jobs", InvalidVersion), ("20000101T000000Z-dead", VersionNotFound)):
        with pytest.raises(error, match="version"):
            registry.path_of(bad)
    elsewhere = shutil.copytree(path / first, tmp_path_factory.mktemp("elsewhere") / first)
    with pytest.raises(RegistryError, match="not a bundle in the root"):
        registry.publish(elsewhere, Recorder())
    renamed = shutil.copytree(path / first, path / "renamed")
    with pytest.raises(RegistryError, match="must be the bundle's version"):
        registry.publish(renamed, Recorder())
    (path / PUBLISHED_FILE).write_text("{")
    with pytest.raises(RegistryError, match="not valid JSON"):
        registry.history()


def _slow_publish(root: str, version: str, log: str) -> None:
    def load(path: Path) -> None:
        with open(log, "a") as out:
            out.write(f"start {time.monotonic()}\n")
        time.sleep(0.5)
        with open(log, "a") as out:
            out.write(f"end {time.monotonic()}\n")

    BundleRegistry(Path(root)).publish(Path(root) / version, load)


def test_publications_from_two_processes_take_turns(root, tmp_path_factory):
    path, first, second = root
    log = tmp_path_factory.mktemp("turns") / "log"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_slow_publish, args=(str(path), v, str(log))) for v in (first, second)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    events = [line.split()[0] for line in log.read_text().splitlines()]
    assert events == ["start", "end", "start", "end"]  # never two loads at once
    registry = BundleRegistry(path)
    assert sorted(registry.history()) == sorted([first, second]) and registry.live_version() == registry.history()[-1]
