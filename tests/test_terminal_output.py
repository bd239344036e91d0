"""What people and log collectors see: readable lines and one progress bar on a terminal, JSON elsewhere."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator

import pytest

from seqrec.shared.logs import configure_logging, log_format

TRAIN_ARGS = ("--epochs", "4", "--eval-every", "2", "--max-len", "10", "--hidden-size", "16", "--heads", "2",
              "--negative-samples", "0", "--sampling", "last")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_and_json_formats(restore_logging, monkeypatch, capsys):
    monkeypatch.setenv("SEQREC_LOG_FORMAT", "text")
    configure_logging()
    logging.getLogger("seqrec.test").info("hello %s", "there", extra={"epoch": 3})
    logging.getLogger("seqrec.test").warning("careful")
    assert re.fullmatch(r"\d\d:\d\d:\d\d hello there\n\d\d:\d\d:\d\d warning: careful\n", capsys.readouterr().err)
    monkeypatch.setenv("SEQREC_LOG_FORMAT", "json")
    configure_logging()
    logging.getLogger("seqrec.test").info("hello", extra={"epoch": 3})
    line = json.loads(capsys.readouterr().err)
    assert (line["msg"], line["epoch"], line["level"], line["logger"]) == ("hello", 3, "info", "seqrec.test")


def test_auto_is_json_unless_stderr_is_a_terminal(monkeypatch):
    monkeypatch.delenv("SEQREC_LOG_FORMAT", raising=False)
    with open(os.devnull, "w") as pipe_like:
        assert log_format(pipe_like) == "json"
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            assert log_format(terminal) == "text"
    finally:
        os.close(leader)
        os.close(follower)


def test_a_bad_log_format_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "seqrec.services.cli", "verify", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "SEQREC_LOG_FORMAT": "xml"})
    assert proc.returncode == 2 and "SEQREC_LOG_FORMAT" in proc.stderr and "Traceback" not in proc.stderr


def _on_a_terminal(argv: list[str], timeout: float = 300.0) -> tuple[int, str]:
    """Run `argv` with stdout and stderr on a pseudo-terminal, as in a person's shell; (exit code, output)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    env = {k: v for k, v in os.environ.items() if k != "SEQREC_LOG_FORMAT"}
    proc = subprocess.Popen(argv, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], timeout)
            if not ready:
                proc.kill()
                raise TimeoutError(f"{argv} printed nothing for {timeout} s")
            try:
                data = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def _lines(output: str) -> list[str]:
    """The lines a person reads: progress-bar redraws (carriage returns) reduced to what stayed on screen."""
    text = ANSI.sub("", output).replace("\r\n", "\n")
    return [segment.split("\r")[-1].strip() for segment in text.split("\n") if segment.split("\r")[-1].strip()]


def test_seqrec_train_on_a_terminal_reads_cleanly(series_csv, tmp_path):
    """A line per validation (no epoch without one, no NaN), one bar for the phase, no third-party warnings, no
    JSON, and a summary next to popularity."""
    code, output = _on_a_terminal([sys.executable, "-m", "seqrec.services.cli", "train", "--data", str(series_csv),
                                   *TRAIN_ARGS, "--out", str(tmp_path / "bundles")])
    assert code == 0, output
    lines = _lines(output)
    assert "torchvision" not in output and not re.search(r"\bnan\b", output, re.I) and "Warning" not in output, output
    assert not [line for line in lines if line.startswith("{")], output  # no JSON for a person
    epochs = [line for line in lines if re.match(r"\d\d:\d\d:\d\d epoch +\d", line)]
    assert [int(re.search(r"epoch +(\d+)", e).group(1)) for e in epochs] == [2, 4], output
    assert all("valid HR@10" in e for e in epochs)
    assert "training epoch 4/4" in output  # the bar names the phase and the epoch
    assert "export" in output and "manifest and checks" in output  # the export phase has its bar too
    assert not re.search(r"(?m)(^|\r)\s*(0batch|0%\|)", ANSI.sub("", output)), output  # no bar without a name
    assert any(line.startswith("test HR@10") and "popularity on the same split" in line for line in lines), output


def test_seqrec_train_in_a_pipe_logs_json_without_bars(series_csv, tmp_path):
    """In a container or a pipe: every stderr line is a JSON object, with no progress bar between them."""
    proc = subprocess.run([sys.executable, "-m", "seqrec.services.cli", "train", "--data", str(series_csv),
                           *TRAIN_ARGS, "--out", str(tmp_path / "bundles")], capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in os.environ.items() if k != "SEQREC_LOG_FORMAT"})
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and all(json.loads(line)["msg"] for line in lines), proc.stderr
    assert "\r" not in proc.stderr and "torchvision" not in proc.stderr
    json.loads(proc.stdout.strip().splitlines()[-1])  # the summary, for scripts
