"""SIGKILL a real training run at set points (as a checkpoint write starts, as one completes), resume each time.

The run must end loadable, at the right step, with the same weights as an uninterrupted run, and each
resume must start from the newest complete checkpoint (so at most the work since it is lost).

Nothing here depends on timing: each kill is triggered by what the run has written (its `Resumed from` line,
then a checkpoint folder appearing), never by a sleep, and comes with many steps still to go. Where exactly
a kill lands (inside the write, the pruning or the next step) varies, and every case must hold; the states a
kill inside a write or a pruning leaves are also planted by hand, so they are exercised on every run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from vq_tokenizer.checkpointing import CHECKPOINT_PATTERN, list_checkpoints

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "train_vqvae.py"
TINY = REPO / "training" / "configs" / "tiny.yaml"
MAX_STEPS = 40
EVERY = 2
ARGS = ["--max_steps", str(MAX_STEPS), "--checkpoint_every", str(EVERY), "--checkpoints_total_limit", "2",
        "--eval_every", "0", "--max_eval_samples", "16", "--report_to", "none"]  # fmt: skip
# (step, what shows on disk when the kill is sent): the write of that checkpoint has started (its `.tmp-`
# folder), or it is complete. At least 20 steps remain after each, so every kill lands before the run ends.
KILLS = [(4, "started"), (12, "complete"), (20, "started")]
HANG_GUARD_S = 600  # only against a hung run; no assertion measures time


def _command(output_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        "--config",
        str(TINY),
        "--output_dir",
        str(output_dir),
        *ARGS,
        *extra,
    ]


class TrainingRun:
    """The script in a subprocess, its merged output collected by a thread while the test watches the disk."""

    def __init__(self, command: list[str]) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO, text=True
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_output(self, text: str) -> None:
        self._wait(lambda: text in self.output, repr(text))

    def wait_for_checkpoint(self, output_dir: Path, step: int, state: str) -> None:
        """Until a checkpoint of `step` or later is `complete`, or its write has `started`."""
        reached = lambda: max(_checkpoint_steps(output_dir, state), default=0) >= step  # noqa: E731
        self._wait(reached, f"checkpoint {step} ({state})")

    def _wait(self, condition, what: str) -> None:
        deadline = time.monotonic() + HANG_GUARD_S
        while not condition():
            assert self.process.poll() is None, f"the run ended before {what}:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} after {HANG_GUARD_S} s (hung?)"
            time.sleep(0.005)

    def finish(self) -> int:
        self.process.wait(timeout=HANG_GUARD_S)
        self.reader.join(timeout=60)
        return self.process.returncode


def _checkpoint_steps(output_dir: Path, state: str) -> list[int]:
    """Steps whose checkpoint is complete, or (`started`) complete or being written."""
    root = output_dir / "checkpoints"
    names = [path.name for path in root.iterdir()] if root.is_dir() else []
    if state == "started":
        names = [name.removeprefix(".tmp-") for name in names]
    return [int(match.group(1)) for name in names if (match := CHECKPOINT_PATTERN.match(name))]


def _newest_step(output_dir: Path) -> int | None:
    checkpoints = list_checkpoints(output_dir / "checkpoints")
    return int(CHECKPOINT_PATTERN.match(checkpoints[-1].name).group(1)) if checkpoints else None


def _assert_checkpoints_loadable(output_dir: Path) -> None:
    for checkpoint in list_checkpoints(output_dir / "checkpoints"):
        load_file(checkpoint / "model.safetensors")
        assert (checkpoint / "optimizer.bin").is_file() and (checkpoint / "custom_checkpoint_0.pkl").is_file()


def _plant_partial_states(output_dir: Path, newest: int) -> None:
    """What a kill inside a checkpoint write (a `.tmp-checkpoint-*` with a truncated file) or inside a
    pruning (a `.tmp-delete-checkpoint-*`) leaves, whether or not this kill happened to land there."""
    root = output_dir / "checkpoints"
    half_written = root / f".tmp-checkpoint-{newest + 10 * EVERY:08d}"
    half_written.mkdir(exist_ok=True)
    (half_written / "model.safetensors").write_bytes(b"\x00" * 10)
    half_deleted = root / f".tmp-delete-checkpoint-{max(0, newest - 10 * EVERY):08d}"
    half_deleted.mkdir(exist_ok=True)
    (half_deleted / "optimizer.bin").write_bytes(b"\x00" * 10)


def test_sigkills_lose_at_most_the_work_since_the_last_checkpoint(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(
        _command(reference), check=True, capture_output=True, cwd=REPO, timeout=HANG_GUARD_S,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    expected = load_file(reference / "model.safetensors")

    crashed = tmp_path / "crashed"
    newest = None  # the newest complete checkpoint when the last run was killed
    for attempt in range(len(KILLS) + 1):
        run = TrainingRun(_command(crashed, *(["--resume_from_checkpoint", "latest"] if attempt else [])))
        if attempt:
            # The resume starts from the newest complete checkpoint, never an older one or a partial one.
            run.wait_for_output("Resumed from")
            resumed = re.search(r"Resumed from \S*checkpoint-(\d+) at step (\d+)", run.output)
            assert resumed and int(resumed.group(1)) == int(resumed.group(2)) == newest, run.output[-3000:]
        if attempt == len(KILLS):
            break
        step, state = KILLS[attempt]
        run.wait_for_checkpoint(crashed, step, state)
        run.process.send_signal(signal.SIGKILL)
        assert run.finish() == -signal.SIGKILL, run.output[-3000:]
        assert not (crashed / "model.safetensors").exists(), "killed before the end: no final model yet"
        # Whatever the kill interrupted, the checkpoints on disk are complete and loadable.
        _assert_checkpoints_loadable(crashed)
        newest = _newest_step(crashed)
        assert newest is not None and newest >= step - EVERY and newest % EVERY == 0, newest
        _plant_partial_states(crashed, newest)

    assert run.finish() == 0, run.output[-3000:]
    assert json.loads((crashed / "metrics.json").read_text())["step"] == MAX_STEPS
    final = load_file(crashed / "model.safetensors")
    for key, value in expected.items():
        assert torch.equal(final[key], value), key
    from transformers import AutoModel

    import vq_tokenizer  # noqa: F401

    AutoModel.from_pretrained(crashed)
    assert not list(crashed.glob(".tmp-*")) and not list((crashed / "checkpoints").glob(".tmp-*"))
