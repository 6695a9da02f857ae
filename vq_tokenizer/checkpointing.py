"""Crash-safe training state: atomic checkpoints, `latest` resolution and atomic final saves.

A checkpoint is written under a temporary name and renamed into place once every process has written
its part, so a folder named `checkpoint-<step>` is complete or absent; a run killed mid-write leaves only
a `.tmp-*` folder, which is never taken as `latest` and is cleared by the next save.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


class TrainingState:
    """Where the loop is: optimizer steps done, epoch, batches consumed in that epoch, seconds trained.

    Registered with `accelerator.register_for_checkpointing`, so `save_state`/`load_state` carry it.
    """

    def __init__(self) -> None:
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.train_seconds = 0.0

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.train_seconds = float(state.get("train_seconds", 0.0))


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in root.iterdir()
        if (match := CHECKPOINT_PATTERN.match(path.name))
    ]
    return [path for _, path in sorted(found)]


class CheckpointManager:
    """Saves and loads `accelerator.save_state` checkpoints atomically, keeping the newest `keep`."""

    def __init__(self, accelerator, root: str | os.PathLike, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"checkpoints_total_limit must be >= 1, got {keep}.")
        self.accelerator = accelerator
        self.root = Path(root)
        self.keep = keep
        self._clear_partial()

    def _clear_partial(self) -> None:
        """Remove what a killed save or prune left under a `.tmp-` name (every process must call it)."""
        if self.accelerator.is_main_process and self.root.is_dir():
            for stale in self.root.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def save(self, step: int) -> Path:
        """Every process must call this (save_state is collective)."""
        accelerator = self.accelerator
        final = self.root / f"checkpoint-{step:08d}"
        partial = self.root / f".tmp-checkpoint-{step:08d}"
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
        self._clear_partial()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _fsync_tree(partial)
            if final.exists():  # re-saving a step, after resuming from an older checkpoint
                _discard(final)
            os.replace(partial, final)
            _fsync_dir(self.root)
            for old in list_checkpoints(self.root)[: -self.keep]:
                _discard(old)
        accelerator.wait_for_everyone()
        return final

    def latest(self) -> Path | None:
        checkpoints = list_checkpoints(self.root)
        return checkpoints[-1] if checkpoints else None

    def load(self, spec: str) -> Path | None:
        """Load `spec` ('latest' or a folder). 'latest' with no checkpoint yet starts from scratch."""
        if spec == "latest":
            path = self.latest()
            if path is None:
                self.accelerator.print(f"No checkpoint in {self.root} yet; starting from step 0.")
                return None
        else:
            path = Path(spec)
            if not path.is_dir() or not CHECKPOINT_PATTERN.match(path.name):
                raise FileNotFoundError(
                    f"{spec} is not a checkpoint folder (expected .../checkpoint-<step>); pass 'latest' or one of "
                    f"{[str(p) for p in list_checkpoints(self.root)] or 'the folders under <output_dir>/checkpoints'}."
                )
        self.accelerator.load_state(str(path))
        return path


def save_pretrained_atomic(output_dir: str | os.PathLike, model, processor=None) -> None:
    """`save_pretrained` of the model (and processor) into `output_dir`, each file renamed into place."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(".tmp-save-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = output_dir / f".tmp-save-{os.getpid()}"
    model.save_pretrained(staging)
    if processor is not None:
        processor.save_pretrained(staging)
    _fsync_tree(staging)
    for path in sorted(staging.iterdir()):
        os.replace(path, output_dir / path.name)
    staging.rmdir()
    _fsync_dir(output_dir)


def _discard(checkpoint: Path) -> None:
    """Delete a checkpoint folder, renaming it first: a kill during the deletion must not leave a half-deleted
    folder under a checkpoint's name (the `.tmp-` name is cleared by the next save or start)."""
    doomed = checkpoint.with_name(f".tmp-delete-{checkpoint.name}")
    os.replace(checkpoint, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
