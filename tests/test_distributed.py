"""Data-parallel training under torchrun: two gloo CPU processes, the same `seqrec train` code path.

Three launches run side by side (about 40 s on 2 loaded cores): `seqrec train` under torchrun, the same
command in one process for reference, and this module itself under torchrun as a worker that checks
the replicas stay in step (identical weights, id-dropout tables, histories and stopping decisions).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seqrec.services.trainer.distributed import broadcast, on_main, rank, session, world_size
from seqrec.services.trainer.train import shard_plan
from seqrec.shared.bundle import Bundle
from tests.conftest import make_series_interactions

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TIMEOUT_S = 300
# A setting this tiny model learns to convergence in seconds: full softmax on next-item targets, no
# dropout, 12 epochs of 2,000 users (~870 steps of 64 sequences). Measured over 5 single-process seeds:
# validation NDCG@10 0.98-1.00, test 0.96-1.00, popularity below 0.05. At 3-4 epochs the model is still
# taking off and seeds differ by 0.2-0.5 NDCG@10, far too noisy to compare two runs.
TRAIN_ARGS = ["--max-len", "12", "--hidden-size", "16", "--heads", "2", "--epochs", "12", "--batch-size", "64",
              "--lr", "0.01", "--dropout", "0", "--negative-samples", "0", "--last-item-mask-share", "1",
              "--seed", "42", "--no-progress"]
# Data-parallel is not bit-identical to one process (rank 1 draws other masks; each step averages two
# half-batch gradients), so it is another sample of the same training. Converged, samples differ by
# under 0.05 NDCG@10; 0.1 leaves room for that and still fails a run that trains badly.
NDCG_TOLERANCE = 0.1
TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env["OMP_NUM_THREADS"] = "1"  # what torchrun gives each worker; 2 cores are shared by all launches
    return env


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            cwd=Path(__file__).resolve().parents[1])


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def launches(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("torch.distributed")
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    root = tmp_path_factory.mktemp("distributed")
    data = root / "series.csv"
    make_series_interactions(2000).to_csv(data, index=False)
    train = ["-m", "seqrec.services.cli", "train", "--data", str(data), *TRAIN_ARGS]
    procs = {
        "dp": _start([*TORCHRUN, *train, "--out", str(root / "dp")]),
        "single": _start([sys.executable, *train, "--out", str(root / "single")]),
        "worker": _start([*TORCHRUN, "-m", "tests.test_distributed", str(root / "worker")]),
    }
    try:
        yield root, {name: _finish(proc) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()


def _summary_lines(stdout: str) -> list[dict]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return [s for s in map(json.loads, lines) if "bundle" in s]


def test_torchrun_writes_one_bundle_and_one_summary(launches):
    root, runs = launches
    code, out, err = runs["dp"]
    assert code == 0, err[-3000:]
    summaries = _summary_lines(out)
    assert len(summaries) == 1, out  # rank 0 alone prints the summary
    assert [p.name for p in (root / "dp").iterdir()] == [Path(summaries[0]["bundle"]).name]  # nor partials
    bundle = Bundle.open(summaries[0]["bundle"])
    metrics = json.loads((bundle.path / "metrics.json").read_text())
    assert metrics["data_parallel"] == {"processes": 2, "backend": "gloo", "batch_per_process": 32,
                                        "global_batch": 64}
    assert summaries[0]["epochs"] == metrics["epochs"]
    # Epoch logs and warnings come from rank 0 only; the other rank's INFO logs are quieted.
    epochs = re.findall(r'"msg": "epoch +(\d+) ', err)  # a line per validation (and the last epoch)
    assert epochs and len(epochs) == len(set(epochs))
    assert err.count('"msg": "No metadata columns') == 1
    assert "Traceback" not in err and "terminate called" not in err


def test_torchrun_metrics_match_one_process(launches):
    _, runs = launches
    for name in ("dp", "single"):
        assert runs[name][0] == 0, runs[name][2][-3000:]
    dp, single = (_summary_lines(runs[name][1])[-1] for name in ("dp", "single"))
    popularity = json.loads((Bundle.open(dp["bundle"]).path / "metrics.json").read_text())["popularity_test"]
    assert popularity["ndcg@10"] < 0.2
    for part in ("valid", "test"):
        a, b = dp[part]["ndcg@10"], single[part]["ndcg@10"]
        assert a > popularity["ndcg@10"] + 0.5 and b > popularity["ndcg@10"] + 0.5, (part, a, b)
        assert abs(a - b) < NDCG_TOLERANCE, (part, a, b)


def test_replicas_stay_in_step(launches):
    """Under DDP every rank must hold the same weights and draw the same hybrid id-dropout tables, and
    take the same validation and stopping decisions (rank 0's, broadcast)."""
    import torch

    root, runs = launches
    code, _, err = runs["worker"]
    assert code == 0, err[-3000:]
    ranks = [torch.load(root / "worker" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert len(ranks[0]["keeps"]) == len(ranks[1]["keeps"]) > 0  # the same number of steps
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["keeps"], ranks[1]["keeps"], strict=True))
    assert ranks[0]["dropped"] > 0  # ids were dropped: the check above is not vacuous
    for key in ("history", "best_epoch", "stopped_early", "best_valid", "result"):
        assert ranks[0][key] == ranks[1][key], key
    assert all(valid for _, _, valid, _ in ranks[1]["history"])  # rank 0's validation reached rank 1
    # sampled softmax: the item tables trained row-sparse, their gradients reduced outside DDP
    assert ranks[0]["reduced_like_dense"] and ranks[1]["reduced_like_dense"]
    assert ranks[1]["result"] == ("ok", 0)  # on_main: rank 0's result on every rank


def test_shard_plan_gives_each_rank_its_own_equal_share():
    plan = list(range(11))
    shards = [shard_plan(plan, r, 3) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # 3 steps each; batches 9 and 10 dropped
    assert shard_plan(plan, 0, 1) == plan


def test_helpers_are_no_ops_without_torchrun(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    with session():
        assert (rank(), world_size()) == (0, 1)
        assert broadcast({"stop": True}) == {"stop": True}
        assert on_main(lambda: 7) == 7


def _sparse_mean_matches_dense(rank: int) -> bool:
    """`all_reduce_sparse_mean` of a sparse gradient whose rows differ by rank (repeated rows, a different
    number per rank) equals the dense all-reduce mean of the same gradients."""
    import torch
    import torch.distributed as dist

    from seqrec.services.trainer.sparse_rows import all_reduce_sparse_mean

    generator = torch.Generator().manual_seed(rank)
    index = torch.randint(0, 50, (7 + 5 * rank,), generator=generator)
    grad = torch.sparse_coo_tensor(index[None], torch.randn(len(index), 4, generator=generator), (50, 4))
    dense = grad.to_dense()
    dist.all_reduce(dense)
    return bool(torch.allclose(all_reduce_sparse_mean(grad).to_dense(), dense / dist.get_world_size(), atol=1e-6))


def _worker(out: Path) -> None:
    """torchrun target: a small hybrid model trained data-parallel; each rank saves what it ended with."""
    import torch

    from seqrec.services.trainer import distributed
    from seqrec.services.trainer.model import BERT4Rec, ModelConfig
    from seqrec.services.trainer.split import leave_one_out
    from seqrec.services.trainer.train import train_model
    from seqrec.shared.config import build_hparams

    n_items = 40
    rng = np.random.default_rng(0)
    sequences = [(int(rng.integers(n_items)) + np.arange(int(rng.integers(5, 12)))) % n_items + 1
                 for _ in range(150)]
    split = leave_one_out(sequences)
    counts = np.bincount(np.concatenate(split.train), minlength=n_items + 2)
    with distributed.session():
        torch.manual_seed(0)
        text = torch.randn(n_items + 2, 8)
        text[0] = text[-1] = 0.0
        newest = torch.zeros(n_items + 2, dtype=torch.bool)
        newest[n_items - 3: n_items + 1] = True  # stand-ins for new items, as the pipeline marks them
        model = BERT4Rec(ModelConfig(n_indices=n_items + 2, max_len=8, hidden_size=16, heads=2, text_dim=8,
                                     id_dropout=0.3, content_dim=8), text=text, n_warm=n_items, newest=newest)
        keeps: list[torch.Tensor] = []
        id_keep = model.id_keep

        def recording_keep(generator=None):
            keeps.append(id_keep(generator).clone())
            return keeps[-1]

        model.id_keep = recording_keep
        hp = build_hparams(max_len=8, hidden_size=16, heads=2, epochs=3, batch_size=16, lr=0.003,
                           negative_samples=10, eval_every=1, patience=1)
        result = train_model(model, split, hp, n_items, counts, seed=3, progress=False)  # sampled: sparse rows
        reduced_like_dense = _sparse_mean_matches_dense(distributed.rank())
        shared = distributed.on_main(lambda: ("ok", distributed.rank()))
        out.mkdir(parents=True, exist_ok=True)
        history = [(r.epoch, r.loss, r.valid, r.train_probe) for r in result.history]  # not the timings
        dropped = sum(int((k < model.id_known).sum()) for k in keeps)
        torch.save({"world": distributed.world_size(), "state": model.state_dict(), "keeps": keeps,
                    "dropped": dropped, "history": history,
                    "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
                    "best_valid": result.best_valid, "result": shared, "reduced_like_dense": reduced_like_dense},
                   out / f"rank{distributed.rank()}.pt")


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
