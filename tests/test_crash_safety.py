"""SIGKILL a training run at random points (before, during and after checkpoint writes), resume each time.

The run must end loadable, at the right step, with the same weights as an uninterrupted run, and each
resume must start from the newest complete checkpoint (so at most the work since it is lost).
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from vq_tokenizer.checkpointing import list_checkpoints

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "train_vqvae.py"
TINY = REPO / "training" / "configs" / "tiny.yaml"
MAX_STEPS = 30
EVERY = 2  # checkpoints this often make it likely that some kills land inside a checkpoint write
ARGS = ["--max_steps", str(MAX_STEPS), "--checkpoint_every", str(EVERY), "--checkpoints_total_limit", "2",
        "--eval_every", "0", "--max_eval_samples", "16", "--report_to", "none"]  # fmt: skip


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


def _env() -> dict:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _newest(output_dir: Path) -> str | None:
    checkpoints = list_checkpoints(output_dir / "checkpoints")
    return checkpoints[-1].name if checkpoints else None


def test_random_sigkills_lose_at_most_the_work_since_the_last_checkpoint(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_command(reference), check=True, capture_output=True, env=_env(), cwd=REPO, timeout=600)
    expected = load_file(reference / "model.safetensors")

    crashed = tmp_path / "crashed"
    rng = random.Random(1234)
    kills, resumed_steps = 0, []
    for attempt in range(8):
        extra = ["--resume_from_checkpoint", "latest"] if attempt else []
        process = subprocess.Popen(
            _command(crashed, *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=REPO,
            text=True,
        )
        if attempt < 3:
            # Wait until training runs (past the imports), then kill after a random delay.
            newest_before = _newest(crashed)
            deadline = time.time() + 300
            while process.poll() is None and time.time() < deadline:
                if _newest(crashed) != newest_before:
                    break
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.6))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
        output, _ = process.communicate(timeout=600)
        if attempt:
            match = re.search(r"Resumed from \S*checkpoint-(\d+) at step (\d+)", output)
            if match:
                assert int(match.group(1)) == int(match.group(2))
                resumed_steps.append(int(match.group(2)))
        # Whatever the kill interrupted, the checkpoints on disk are complete and loadable.
        for checkpoint in list_checkpoints(crashed / "checkpoints"):
            load_file(checkpoint / "model.safetensors")
            assert (checkpoint / "optimizer.bin").is_file() and (
                checkpoint / "custom_checkpoint_0.pkl"
            ).is_file()
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, output[-3000:]
    assert process.returncode == 0, "the run never finished"
    assert kills >= 2, "the test must really interrupt the run"
    assert resumed_steps and all(step % EVERY == 0 for step in resumed_steps)
    assert resumed_steps == sorted(resumed_steps), "a resume never goes back past a completed checkpoint"

    import json

    assert json.loads((crashed / "metrics.json").read_text())["step"] == MAX_STEPS
    final = load_file(crashed / "model.safetensors")
    for key, value in expected.items():
        assert torch.equal(final[key], value), key
    from transformers import AutoModel

    import vq_tokenizer  # noqa: F401

    AutoModel.from_pretrained(crashed)
    assert not list(crashed.glob(".tmp-*")) and not list((crashed / "checkpoints").glob(".tmp-*"))
