"""`vq-tokenizer encode-dataset` on several real processes (`accelerate launch`, gloo on CPU): the same shards
whatever the number of processes, from a dataset or a stream; SIGKILL of a whole 2-process run, then the same
command finishes the job, keeping the finished parts.

Nothing here depends on timing: each kill is triggered by the parts the run has written (never a sleep), and the
run must still be unfinished when it lands (so a kill that came too late fails the test instead of passing it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import fashion
import pytest
import torch

from vq_tokenizer import VQVAEConfig, VQVAEImageProcessor, VQVAEModel

REPO = Path(__file__).resolve().parents[1]
ROWS = 2048
SHARD = 128  # 16 parts: a kill after two of them leaves most of the run to do
ARGS = ["--split", "train", "--shard_size", str(SHARD), "--batch_size", "64", "--offset", "10"]
HANG_GUARD_S = 600  # only against a hung run; no assertion measures time


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(processes: int, *args: str) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]  # fmt: skip
    return [*(launch if processes > 1 else [sys.executable]), "-m", "vq_tokenizer", "encode-dataset", *args]


def _env() -> dict:
    # `--cpu --num_processes 2` would start only one process: gloo on CPU is asked for this way.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "ACCELERATE_USE_CPU": "true"}


def _run(processes: int, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        _command(processes, *args), capture_output=True, text=True, env=_env(), cwd=REPO, timeout=HANG_GUARD_S
    )
    assert result.returncode == 0, f"encode-dataset failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """A freshly initialised tokenizer of the default size (slow enough that a kill lands mid-run)."""
    folder = tmp_path_factory.mktemp("tokenizer")
    torch.manual_seed(0)
    model = VQVAEModel(VQVAEConfig(in_channels=1))
    model.save_pretrained(folder)
    VQVAEImageProcessor(num_channels=1, size_divisor=model.config.downsampling_factor).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """The first ROWS Fashion-MNIST images as a save_to_disk folder, and as three parquet files to stream."""
    root = tmp_path_factory.mktemp("sources")
    rows = fashion.fashion_subset_of(ROWS)
    rows.save_to_disk(str(root / "saved"))
    (root / "parquet").mkdir()
    for index, (start, stop) in enumerate([(0, 700), (700, 750), (750, ROWS)]):
        rows.select(range(start, stop)).to_parquet(str(root / "parquet" / f"train-{index}.parquet"))
    return {"saved": root / "saved", "parquet": root / "parquet"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokenizer, sources) -> Path:
    """One process's output: what every other run must reproduce byte for byte."""
    output = tmp_path_factory.mktemp("reference") / "codes"
    _run(1, "--model", str(tokenizer), "--dataset", str(sources["saved"]), "-o", str(output), *ARGS)
    return output


def _shards(output: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((output / "data").iterdir())}


def test_one_and_two_processes_write_the_same_shards(tmp_path, tokenizer, sources, reference):
    result = _run(
        2, "--model", str(tokenizer), "--dataset", str(sources["saved"]), "-o", str(tmp_path), *ARGS
    )
    assert _shards(tmp_path) == _shards(reference) and len(_shards(reference)) == ROWS // SHARD
    assert result.stdout.count("this run encoded 2048 rows") == 1, "one summary, from the main process"
    assert result.stderr.count("Encoding train:   0%") == 1, "one progress bar"
    loaded = datasets.load_dataset(str(tmp_path), split="train")
    assert loaded["index"][:] == list(range(ROWS))
    assert loaded["label"][:] == datasets.load_from_disk(str(sources["saved"]))["label"][:]


def test_two_processes_streaming_parquet_write_the_same_shards(tmp_path, tokenizer, sources, reference):
    args = [
        "--model",
        str(tokenizer),
        "--dataset",
        str(sources["parquet"]),
        "--streaming",
        "-o",
        str(tmp_path),
    ]
    _run(2, *args, *ARGS, "--num_workers", "1")
    assert _shards(tmp_path) == _shards(reference)
    assert "streamed" in (tmp_path / "README.md").read_text()


class _Run:
    """The command on 2 processes, killed with SIGKILL (launcher and workers at once) when asked."""

    def __init__(self, args: list[str]):
        self.process = subprocess.Popen(
            _command(2, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(), cwd=REPO,
            start_new_session=True,
        )  # fmt: skip

    def kill_when(self, condition, what: str) -> None:
        deadline = time.monotonic() + HANG_GUARD_S
        while not condition():
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode(errors="replace")
                raise AssertionError(f"the run ended before {what}:\n{output[-3000:]}")
            assert time.monotonic() < deadline, f"no {what} after {HANG_GUARD_S} s (hung?)"
            time.sleep(0.002)
        # The launcher starts each process in a session of its own: kill every descendant by its id.
        for pid in [*_descendants(self.process.pid), self.process.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=60)
        self.process.stdout.close()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _finished_parts(output: Path) -> dict[str, int]:
    """Part files of the running split (name -> inode)."""
    parts = output / ".parts" / "train"
    found = {}
    for path in parts.glob("[0-9]*.parquet") if parts.is_dir() else []:
        try:
            found[path.name] = path.stat().st_ino
        except FileNotFoundError:
            pass
    return found


def _complete(output: Path) -> bool:
    try:
        manifest = json.loads((output / "vq_tokenizer_encoding.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest["splits"].get("train", {}).get("state") == "complete"


@pytest.mark.parametrize("source", ["saved", "parquet"])
def test_sigkilled_two_process_runs_are_finished_by_the_same_command(
    tmp_path, tokenizer, sources, reference, source
):
    output = tmp_path / "codes"
    args = ["--model", str(tokenizer), "--dataset", str(sources[source]), "-o", str(output), *ARGS]
    args += ["--streaming"] if source == "parquet" else []
    kept: dict[str, int] = {}
    for kill in (2, 5):  # kill when that many parts are finished; the second kill hits the resumed run
        run = _Run(args)
        run.kill_when(lambda n=kill: len(_finished_parts(output)) >= n, f"{kill} finished parts")
        assert not _complete(output), "the kill must land before the run ends (use more rows)"
        now = _finished_parts(output)
        assert kept.items() <= now.items(), "parts of the killed run are kept as they are"
        kept = now
    # What a kill inside a part's write leaves (whether or not one landed there): a temporary file, and a
    # part cut short (which the atomic rename never shows, but a copy by hand might).
    parts = output / ".parts" / "train"
    (parts / ".00015.parquet.tmp-99999").write_bytes(b"PAR1 half written")
    missing = min(set(range(ROWS // SHARD)) - {int(name[:5]) for name in kept})
    (parts / f"{missing:05d}.parquet").write_bytes(b"PAR1 cut")

    result = _run(2, *args, "--json", str(tmp_path / "summary.json"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["encoded_rows"] == ROWS - SHARD * len(kept), "finished parts are not encoded again"
    assert summary["num_rows"] == ROWS and summary["skipped"] == [], result.stdout
    assert _shards(output) == _shards(reference)
    count = ROWS // SHARD
    for name, inode in kept.items():
        assert (output / "data" / f"train-{name[:5]}-of-{count:05d}.parquet").stat().st_ino == inode
    loaded = datasets.load_dataset(str(output), split="train")
    assert loaded["index"][:] == list(range(ROWS)), "every row exactly once, in the source order"
    assert not (output / ".parts").exists()
