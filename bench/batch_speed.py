"""Users per second of `seqrec batch-recommend`, next to RecBole's batch scoring, on one bundle.

    # the bundle (ml-latest-small, 5-core, max_len 200; a short training is enough for speed)
    seqrec train --data ../shared/data/ml-latest-small/ratings.csv --user-col userId --item-col movieId \
        --time-col timestamp --min-user-interactions 5 --min-item-interactions 5 --max-len 200 --epochs 20 \
        --out /tmp/batch-bench
    python bench/batch_speed.py --bundle /tmp/batch-bench --out docs/batch.md

Measured, every user of the bundle, top-10, seen items excluded, best of --repeats runs:

- `exact`: histories from the bundle, ONNX Runtime encoder, the scoring contract's exact top-k in numpy;
- `exact, --max-batch-tokens 0`: the same without the CPU cap on padded cells per ONNX batch;
- `exact, Redis histories`: the same as `exact`, histories read from a redis-server the bundle was published into;
- `milvus`: histories from the bundle, search in a `milvus-lite server` (FLAT), as the online ranker;
- RecBole 1.2.1 BERT4Rec of the same size (hidden 64, 2 layers, 4 heads, max_len 200) on the peers'
  5-core ml-latest-small CSV: `full_sort_predict` + seen masking + `torch.topk`, batches of --batch-size,
  torch with 2 threads, in its own venv (../shared/bench/peers/README.md). Its weights are untrained:
  scoring cost does not depend on them. Its dataset and model construction are not timed.

"scoring" is the loop over users (encode, score, top-k, and for ours writing Parquet); "wall" adds
bundle verification, ONNX session and catalog set-up. The RecBole worker is this file run with
`--recbole-worker` under the peer's interpreter, so it imports nothing from seqrec at module level.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

START, END = "<!-- bench/batch_speed.py: start -->", "<!-- bench/batch_speed.py: end -->"
PEERS_DIR = Path(__file__).resolve().parents[2] / "shared" / "bench" / "peers"
RATINGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small" / "ratings.csv"


# ---- RecBole (runs under the peer's venv) ----------------------------------------------------------

def recbole_worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(args.peers_dir))
    import logging

    import peers_common as pc
    import run_recbole
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.data.interaction import Interaction
    from recbole.utils import get_model, init_seed

    torch.set_num_threads(args.threads)
    setup = time.perf_counter()
    data = pc.load_loo(str(args.data), "mlsmall5")
    work = tempfile.mkdtemp(prefix="recbole_batch_")
    run_recbole.write_atomic(data, work)
    cfg = {"data_path": work, "checkpoint_dir": os.path.join(work, "ckpt"), "USER_ID_FIELD": "user_id",
           "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
           "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "MAX_ITEM_LIST_LENGTH": args.max_len,
           "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
           "train_neg_sample_args": None, "loss_type": "CE", "hidden_size": 64, "inner_size": 256, "n_layers": 2,
           "n_heads": 4, "hidden_dropout_prob": 0.1, "attn_dropout_prob": 0.1, "seed": 42, "use_gpu": False,
           "device": "cpu", "show_progress": False, "worker": 0, "log_wandb": False, "state": "WARNING",
           "mask_ratio": 0.15}
    config = Config(model="BERT4Rec", dataset=data.name, config_dict=cfg)
    init_seed(config["seed"], True)
    torch.set_num_threads(args.threads)
    logging.getLogger().setLevel(logging.WARNING)
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data._dataset).to("cpu").eval()
    torch.autograd.set_detect_anomaly(False)  # RecBole switches it on at import (see the peers README)
    tok2id = dataset.field2token_id["item_id"]
    id2tok = dataset.field2id_token["item_id"]
    users = list(data.seqs)
    histories = [[int(tok2id[str(i)]) for i in data.seqs[u]][-args.max_len:] for u in users]
    setup = time.perf_counter() - setup

    best = None
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = []
        with torch.no_grad():
            for b in range(0, len(users), args.batch_size):
                rows = histories[b:b + args.batch_size]
                seqs = torch.tensor([h + [0] * (args.max_len - len(h)) for h in rows], dtype=torch.long)
                lens = torch.tensor([len(h) for h in rows], dtype=torch.long)
                scores = model.full_sort_predict(Interaction({model.ITEM_SEQ: seqs, model.ITEM_SEQ_LEN: lens}))
                scores[:, 0] = -torch.inf  # [PAD]
                seen_rows = torch.repeat_interleave(torch.arange(len(rows)), lens)
                scores[seen_rows, seqs[seqs > 0]] = -torch.inf  # seen items (right-padded rows: row-major order)
                top = torch.topk(scores, args.top_k, dim=1)
                out.extend([[id2tok[i] for i in row] for row in top.indices.tolist()])
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    import recbole

    print(json.dumps({"users": len(users), "seconds": round(best, 3), "users_per_s": round(len(users) / best, 1),
                      "setup_seconds": round(setup, 1), "recbole": recbole.__version__, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "items": int(dataset.item_num - 1)}))


# ---- seqrec ---------------------------------------------------------------------------------------------

def resolve(path: Path) -> Path:
    """A bundle directory, the LIVE one of a root, or the newest bundle under a root."""
    if (path / "manifest.json").is_file():
        return path
    if (path / "LIVE").is_file():
        return path / (path / "LIVE").read_text().strip()
    bundles = sorted(p for p in path.iterdir() if (p / "manifest.json").is_file())
    if not bundles:
        raise SystemExit(f"{path}: no bundle (train one with the command in this file's docstring)")
    return bundles[-1]


def time_batch(label: str, bundle: Path, scratch: Path, repeats: int, **options: Any) -> dict[str, Any]:
    from seqrec.services.ranker.batch import BatchOptions, run_batch

    best: dict[str, Any] | None = None
    for n in range(repeats):
        start = time.perf_counter()
        summary = run_batch(BatchOptions(bundle=bundle, out=scratch / f"{label}-{n}", overwrite=True, progress=False,
                                         **options))
        wall = time.perf_counter() - start
        run = {"path": label, "users": summary.users, "seconds": summary.seconds, "users_per_s": summary.users_per_s,
               "wall_seconds": round(wall, 3), "wall_users_per_s": round(summary.users / wall, 1),
               "rows": summary.rows_written}
        print(json.dumps(run), file=sys.stderr)
        if best is None or run["seconds"] < best["seconds"]:
            best = run
    assert best is not None
    return best


def run_recbole(args: argparse.Namespace) -> dict[str, Any] | str:
    python = args.peers_venv / "bin" / "python"
    if not python.is_file():
        return f"no RecBole venv at {args.peers_venv} (see ../shared/bench/peers/README.md)"
    data = args.peer_data
    if not data.is_file():
        data.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(args.peers_dir / "prep_data.py"), "mlsmall", str(args.ratings), str(data),
                        "--kcore", "5"], check=True)
    cmd = [str(python), str(Path(__file__).resolve()), "--recbole-worker", "--data", str(data),
           "--peers-dir", str(args.peers_dir), "--max-len", str(args.max_len), "--batch-size", str(args.batch_size),
           "--top-k", str(args.top_k), "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.peer_timeout)
    if proc.returncode != 0:
        return f"RecBole worker failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("/tmp/batch-bench"))
    parser.add_argument("--out", type=Path, default=Path("docs/batch.md"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--max-len", type=int, default=200, help="RecBole's max length (match the bundle's)")
    parser.add_argument("--peers-venv", type=Path, default=Path(os.environ.get("PEERS", "/tmp/peers")) / "venv-recbole")
    parser.add_argument("--peers-dir", type=Path, default=PEERS_DIR)
    parser.add_argument("--peer-data", type=Path, default=Path(os.environ.get("PEERS", "/tmp/peers")) / "data" /
                        "mlsmall5.csv")
    parser.add_argument("--ratings", type=Path, default=RATINGS)
    parser.add_argument("--peer-timeout", type=int, default=900)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the RecBole worker")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--recbole-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.recbole_worker:
        recbole_worker(args)
        return

    from seqrec.services.ranker.publish import publish
    from seqrec.shared.bundle import Bundle
    from seqrec.shared.local_services import start_milvus_lite, start_redis

    load = os.getloadavg()[0]
    bundle_path = resolve(args.bundle)
    bundle = Bundle.open(bundle_path)
    common = {"top_k": args.top_k, "batch_size": args.batch_size}
    rows = []
    with tempfile.TemporaryDirectory(prefix="batch-speed-") as tmp:
        scratch = Path(tmp)
        rows.append(time_batch("exact", bundle_path, scratch, args.repeats, **common))
        rows.append(time_batch("exact, --max-batch-tokens 0", bundle_path, scratch, args.repeats, max_batch_tokens=0,
                               **common))
        redis_server = start_redis(scratch / "redis")
        milvus = start_milvus_lite(scratch / "milvus")
        try:
            redis_url, milvus_uri = f"redis://{redis_server.address}/0", f"http://{milvus.address}"
            publish(bundle_path, redis_url, milvus_uri, progress=False)
            rows.append(time_batch("exact, Redis histories", bundle_path, scratch, args.repeats, redis_url=redis_url,
                                   **common))
            rows.append(time_batch("milvus", bundle_path, scratch, args.repeats, milvus_uri=milvus_uri, **common))
        finally:
            milvus.stop()
            redis_server.stop()
    peer = "skipped (--no-peer)" if args.no_peer else run_recbole(args)
    print(json.dumps({"seqrec": rows, "recbole": peer}), file=sys.stderr)

    hp = bundle.manifest.config["hparams"]
    lines = [
        START,
        "## Speed",
        "",
        f"`seqrec batch-recommend` on bundle `{bundle.version}` (ml-latest-small, 5-core: "
        f"{rows[0]['users']} users, {bundle.vocab().n_items} items; hidden {hp.get('hidden_size')}, "
        f"depth {hp.get('depth')}, heads {hp.get('heads')}, max_len {bundle.max_len}): top-{args.top_k} for every "
        f"user, seen items excluded, ONNX batches of at most {args.batch_size} users and (by default, on CPU) "
        f"4096 padded history cells, best of {args.repeats} runs. "
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), load average {load:.1f} at the start "
        "(shared with other jobs), so treat differences under ~20% as noise.",
        "",
        "| path | users | scoring s | users/s (scoring) | wall s | users/s (wall) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| seqrec {row['path']} | {row['users']} | {row['seconds']:.2f} | {row['users_per_s']:,.0f} | "
                     f"{row['wall_seconds']:.2f} | {row['wall_users_per_s']:,.0f} |")
    if isinstance(peer, dict):
        lines.append(f"| RecBole {peer['recbole']} BERT4Rec `full_sort_predict` + top-k (torch {peer['torch']}, "
                     f"{peer['threads']} threads) | {peer['users']} | {peer['seconds']:.2f} | "
                     f"{peer['users_per_s']:,.0f} | (+{peer['setup_seconds']:.0f} s dataset/model set-up) | |")
    else:
        lines.append(f"| RecBole | | | not measured: {peer} | | |")
    lines += [
        "",
        "- *scoring*: the loop over users — histories, ONNX encoder, top-k, Parquet parts and manifest for ours; "
        "`full_sort_predict`, seen masking and `torch.topk` for RecBole (untrained weights: the cost does not "
        "depend on them). *wall*: ours including bundle verification (sha256 of every file), ONNX session and "
        "catalog set-up.",
        "- Ours sorts the users of a part by history length, so an ONNX batch is only as wide as its longest "
        "history, and on CPU caps a batch at 4096 padded cells (users x width): wide batches of long histories "
        "make attention fall out of cache (`--max-batch-tokens 0` row: no cap). RecBole always runs "
        "`max_len`-wide sequences.",
        "- The Milvus path sends one search request per ONNX batch (over-fetching `top_k` + the longest seen "
        "list, as online); the exact path needs no store.",
        "",
        "Command:",
        "",
        "```bash",
        "seqrec train --data ../shared/data/ml-latest-small/ratings.csv --user-col userId --item-col movieId \\",
        "    --time-col timestamp --min-user-interactions 5 --min-item-interactions 5 --max-len 200 --epochs 20 \\",
        "    --out /tmp/batch-bench",
        f"python bench/batch_speed.py --bundle /tmp/batch-bench --repeats {args.repeats} --out {args.out}",
        "```",
        "",
        END,
    ]
    write_section(args.out, "\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)


def write_section(path: Path, section: str) -> None:
    """Replace the generated section of `path` (between the markers), or append it."""
    text = path.read_text() if path.is_file() else "# Batch recommendations\n"
    if START in text and END in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()
