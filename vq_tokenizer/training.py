"""What the training scripts share: recipe plus command line, the schedule, the clock and the Hub push.

- [`RecipeArgumentParser`]: transformers' `HfArgumentParser` over a script's argument dataclasses, plus
  `--config recipe.yaml`. The recipe's keys become the parser's defaults, so the command line wins; a key that
  names no option is refused; mappings the script reads itself (the `model:` mapping of a `VQVAEConfig`) come
  back as they are.
- [`TrainingSchedule`]: how long a run trains (`max_steps` or `max_train_minutes`, whichever runs out first) and
  its learning rate on the way: linear warm-up, then constant or cosine down to a floor over whichever binds.
- [`TrainingClock`]: seconds trained, as the main process counts them, so every process agrees.
- [`HubArguments`] and [`push_folder`]: the `--push_to_hub` options and the one upload they lead to.

Used by `training/train_vqvae.py`, `training/train_prior.py` and `benchmarks/training.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import HfArgumentParser


class RecipeArgumentParser(HfArgumentParser):
    """`HfArgumentParser` that also reads a YAML recipe given as `--config`.

    Args:
        dataclass_types: the argument dataclasses, one option per field (see `HfArgumentParser`).
        mappings: top-level recipe keys that hold a mapping the script reads itself (e.g. `("model",)`); they
            have no command-line option and come back from [`parse_recipe_and_args`] as they are.
        kwargs: passed to `argparse.ArgumentParser` (`description=__doc__` shows the script's docstring).

    Example:

    ```python
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Arguments:
    ...     learning_rate: float = 1e-3
    ...     max_steps: int = 100
    >>> parser = RecipeArgumentParser(Arguments)
    >>> (arguments,), _ = parser.parse_recipe_and_args(["--max_steps", "20"])
    >>> arguments
    Arguments(learning_rate=0.001, max_steps=20)
    ```
    """

    def __init__(self, dataclass_types, mappings: Sequence[str] = (), **kwargs) -> None:
        self.mappings = tuple(mappings)
        listed = f", and the `{'`, `'.join(self.mappings)}:` mapping" if self.mappings else ""
        # A parent parser's options come first in --help, and it reads `--config` alone before the rest.
        self.config_parser = argparse.ArgumentParser(add_help=False)
        self.config_parser.add_argument(
            "--config", help=f"YAML recipe: its keys are the options below{listed}; the command line wins"
        )
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(dataclass_types, parents=[self.config_parser], **kwargs)

    def option_names(self) -> set[str]:
        """Every key a recipe may set: the dataclasses' fields."""
        return {f.name for dtype in self.dataclass_types for f in dataclasses.fields(dtype) if f.init}

    def parse_recipe_and_args(
        self, argv: Sequence[str] | None = None
    ) -> tuple[tuple[Any, ...], dict[str, dict]]:
        """The dataclass instances (in the order given) and the recipe's mappings (`{}` for any not in it).

        Errors (an unreadable recipe, unknown keys, a value a dataclass refuses with `ValueError`) end the
        program with a usage message and exit status 2, as argparse does.
        """
        argv = list(argv) if argv is not None else None
        recipe = self._read_recipe(self.config_parser.parse_known_args(argv)[0].config)
        mappings = {name: dict(recipe.pop(name, None) or {}) for name in self.mappings}
        # The recipe's values are the defaults of this parse only; the parser keeps its own for the next one.
        own_defaults = {name: self.get_default(name) for name in recipe}
        self.set_defaults(**recipe)
        try:
            values = vars(self.parse_args(argv))
        finally:
            self.set_defaults(**own_defaults)
        values.pop("config")
        try:
            return self.parse_dict(values), mappings
        except ValueError as error:
            self.error(str(error))

    def _read_recipe(self, path: str | None) -> dict:
        if path is None:
            return {}
        import yaml

        try:
            recipe = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            self.error(f"cannot read the recipe {path}: {error}")
        if not isinstance(recipe, dict):
            self.error(f"{path} must hold a mapping of option names to values")
        unknown = sorted(set(recipe) - self.option_names() - set(self.mappings))
        if unknown:
            self.error(f"unknown keys in {path}: {unknown}")
        for name in self.mappings:
            if not isinstance(recipe.get(name) or {}, dict):
                self.error(f"`{name}:` in {path} must be a mapping")
        return recipe


@dataclass
class DatasetArguments:
    """Where the images or clips come from (both scripts); each script adds its own fields."""

    dataset_name: str = field(
        default="fashion_mnist", metadata={"help": "fashion_mnist, speech_corpus, a datasets id or a folder"}
    )
    dataset_config: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    image_column: str | None = field(default=None, metadata={"help": "default: found by name"})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None


@dataclass
class HubArguments:
    """`--push_to_hub`: where the result goes, and with which token."""

    push_to_hub: bool = field(default=False, metadata={"help": "upload the result at the end"})
    hub_model_id: str | None = field(default=None, metadata={"help": "e.g. me/vqvae-fashion-mnist"})
    hub_token: str | None = field(default=None, metadata={"help": "defaults to the cached login / HF_TOKEN"})
    hub_private_repo: bool = False

    def __post_init__(self) -> None:
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. me/vqvae-fashion-mnist)")


def push_folder(
    hub: HubArguments,
    folder: str | os.PathLike,
    commit_message: str,
    ignore_patterns: Iterable[str] | None = None,
    allow_patterns: Iterable[str] | None = None,
    branch: str | None = None,
):
    """Upload `folder` to `hub.hub_model_id` in one commit (creating the repo, and `branch` if given).

    Returns the `CommitInfo`. Errors are the caller's to handle: raise for a final push, warn for a side one.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=hub.hub_token)
    api.create_repo(hub.hub_model_id, private=hub.hub_private_repo, exist_ok=True)
    if branch is not None:
        api.create_branch(hub.hub_model_id, branch=branch, exist_ok=True)
    return api.upload_folder(
        repo_id=hub.hub_model_id,
        folder_path=str(folder),
        allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
        ignore_patterns=list(ignore_patterns) if ignore_patterns is not None else None,
        revision=branch,
        commit_message=commit_message,
    )


@dataclass(frozen=True)
class TrainingSchedule:
    """A run's budget and its learning rate over it.

    The run is over after `max_steps` optimizer steps or `max_seconds` of training, whichever comes first
    (either may be `None`). The learning rate warms up linearly over `warmup_steps`, then stays at
    `learning_rate` (`decay="constant"`) or follows a half cosine down to `final_factor * learning_rate`
    (`decay="cosine"`) over the run's progress: the larger of the share of post-warm-up steps done and the share of
    the time used, so a run cut by time anneals fully just as one cut by steps does.

    transformers' `get_cosine_schedule_with_warmup` and torch's schedulers count steps only; the recipes that
    train for a time budget need the time share too, and this is the one place that computes it.

    Example:

    ```python
    >>> schedule = TrainingSchedule(1e-3, max_steps=100, warmup_steps=10)
    >>> schedule.learning_rate_at(0), schedule.learning_rate_at(10), schedule.learning_rate_at(100)
    (0.0001, 0.001, 0.0)
    >>> TrainingSchedule(1e-3, max_steps=100, max_seconds=60).learning_rate_at(5, seconds=30)
    0.0005
    ```
    """

    learning_rate: float
    max_steps: int | None = None
    max_seconds: float | None = None
    warmup_steps: int = 0
    decay: Literal["constant", "cosine"] = "cosine"
    final_factor: float = 0.0

    def __post_init__(self) -> None:
        if self.decay not in ("constant", "cosine"):
            raise ValueError(f"decay must be 'constant' or 'cosine', got {self.decay!r}.")
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError("A schedule needs max_steps, max_seconds or both.")
        if self.warmup_steps < 0 or not 0.0 <= self.final_factor <= 1.0:
            raise ValueError(
                f"warmup_steps must be >= 0 and final_factor in [0, 1], got {self.warmup_steps} and "
                f"{self.final_factor}."
            )

    def progress(self, step: int, seconds: float = 0.0) -> float:
        """Share of the budget used after warm-up, in [0, 1]: the larger of the step and time shares."""
        shares = [0.0]
        if self.max_steps is not None:
            shares.append((step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        if self.max_seconds:
            shares.append(seconds / self.max_seconds)
        return min(1.0, max(shares))

    def finished(self, step: int, seconds: float = 0.0) -> bool:
        out_of_steps = self.max_steps is not None and step >= self.max_steps
        return out_of_steps or (self.max_seconds is not None and seconds >= self.max_seconds)

    def factor(self, step: int, seconds: float = 0.0) -> float:
        """The learning rate's multiplier for the step after `step` steps and `seconds` of training."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        cosine = 0.5 * (1 + math.cos(math.pi * self.progress(step, seconds)))
        return self.final_factor + (1 - self.final_factor) * cosine

    def learning_rate_at(self, step: int, seconds: float = 0.0) -> float:
        return self.learning_rate * self.factor(step, seconds)

    def apply(self, optimizer: torch.optim.Optimizer, step: int, seconds: float = 0.0) -> float:
        """Set every parameter group's learning rate for the next step; returns it."""
        learning_rate = self.learning_rate_at(step, seconds)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        return learning_rate


class TrainingClock:
    """Seconds trained, counted on the main process and broadcast to every process (one collective per call).

    Every process then takes the same learning rate and stops at the same step. `seconds_before`: the time
    trained before this process started (a resumed run's checkpointed figure). Time spent inside `paused()`
    (an evaluation in the middle of a run) is not training time: it neither ends the budget nor moves the schedule.
    """

    def __init__(self, accelerator, seconds_before: float = 0.0, timer=time.monotonic) -> None:
        self.accelerator = accelerator
        self.seconds_before = seconds_before
        self.timer = timer
        self.started = timer()

    def seconds(self) -> float:
        """Every process must call this together."""
        from accelerate.utils import broadcast

        elapsed = self.seconds_before + self.timer() - self.started
        elapsed = torch.tensor([elapsed], dtype=torch.float64, device=self.accelerator.device)
        return float(broadcast(elapsed).item())

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop counting for the body of the `with` block."""
        stopped = self.timer()
        try:
            yield
        finally:
            self.started += self.timer() - stopped
