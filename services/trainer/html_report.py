"""The training report as one self-contained HTML page (report.html in the bundle): no external file, script
or font, so it opens offline, from the bundle folder, or inside the gateway's console.

It holds what report.md holds, laid out for reading: the headline against the baselines on the same test
split (popularity, a first-order Markov chain), the full metrics table, the curves (the PNG inlined), the
warnings, the data and the hyperparameters.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from seqrec.services.trainer.report import METRIC_COLUMNS, report_rows
from seqrec.shared.config import TrainConfig

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 62rem; color: #1d2430; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0; } td, th { padding: .25rem .6rem; border-bottom: 1px solid #dde; }
th { text-align: left; background: #f3f5f9; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.bar { background: #3b6fd8; height: .8rem; display: inline-block; vertical-align: middle; }
.bar.base { background: #9aa5b8; } .warn li { color: #8a4b00; } img { max-width: 100%; }
code { background: #f3f5f9; padding: 0 .2rem; }
"""
HEADLINE = (("the model", "test"), ("popularity", "popularity_test"), ("first-order Markov chain", "markov_test"))


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def _headline(metrics: dict[str, Any]) -> list[str]:
    """NDCG@10 and HR@10 of the model next to the baselines, with bars scaled to the best of them."""
    rows = [(name, metrics[key]) for name, key in HEADLINE if metrics.get(key)]
    if not rows:
        return []
    top = max(max(m.get("ndcg@10", 0.0) for _, m in rows), 1e-9)
    out = ["<table><tr><th>test split</th><th>NDCG@10</th><th></th><th>HR@10</th></tr>"]
    for name, m in rows:
        width = 16 * m.get("ndcg@10", 0.0) / top
        style = "bar" if name == "the model" else "bar base"
        out.append(f"<tr><td>{html.escape(name)}</td><td class=n>{m.get('ndcg@10', float('nan')):.4f}</td>"
                   f"<td><span class='{style}' style='width:{width:.2f}rem'></span></td>"
                   f"<td class=n>{m.get('hr@10', float('nan')):.4f}</td></tr>")
    return [*out, "</table>"]


def html_report(version: str, cfg: TrainConfig, stats: dict[str, Any], metrics: dict[str, Any],
                warnings: list[str], curves: Path | None) -> str:
    """The page; `curves` is the training-curves PNG to inline (None: no training history)."""
    title = f"Training report: bundle {html.escape(version)}"
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{title}</h1>",
             f"<p>Data <code>{html.escape(str(cfg.data.data))}</code>: {stats.get('users', '?')} users, "
             f"{stats.get('items', '?')} items, {stats.get('rows_used', '?')} interactions used of "
             f"{stats.get('rows_read', '?')} read. Each user's last interaction is the test target, the one before "
             "it the validation target; every item is ranked.</p>", *_headline(metrics)]
    if "epochs" in metrics:
        device = html.escape(str(metrics.get("device")))
        parts.append(f"<p>{metrics['epochs']} epochs (best {metrics.get('best_epoch', '?')}), "
                     f"{metrics.get('train_seconds', 0.0):.1f} s of training on {device}"
                     f"{', stopped early' if metrics.get('stopped_early') else ''}.</p>")
    listed = [f"<li>{html.escape(w)}</li>" for w in warnings] or ["<li>none</li>"]
    parts += ["<h2>Warnings</h2>", "<ul class=warn>", *listed, "</ul>"]
    if curves is not None and curves.is_file():
        encoded = base64.b64encode(curves.read_bytes()).decode("ascii")
        parts += ["<h2>Training curves</h2>", f"<img alt='training curves' src='data:image/png;base64,{encoded}'>"]
    parts += ["<h2>All metrics</h2>", "<table><tr><th>split</th>"
              + "".join(f"<th>{html.escape(k.upper())}</th>" for k in METRIC_COLUMNS) + "</tr>"]
    for split, m in report_rows(metrics).items():
        parts.append(f"<tr><td>{html.escape(split)}</td>"
                     + "".join(f"<td class=n>{m.get(k, float('nan')):.4f}</td>" for k in METRIC_COLUMNS) + "</tr>")
    parts += ["</table>", "<h2>Hyperparameters</h2>", "<table>"]
    parts += [f"<tr><td>{html.escape(k)}</td><td class=n>{_number(v)}</td></tr>"
              for k, v in sorted(cfg.hparams.__dict__.items())]
    parts += ["</table>", "</body></html>"]
    return "\n".join(parts)
