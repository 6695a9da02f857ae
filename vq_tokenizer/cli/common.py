"""What every `vq-tokenizer` subcommand shares: loading a tokenizer, the model options, errors and notes."""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass

from ..configuration_vqvae import VQVAEConfig
from ..modalities import Modality, modality_for
from ..modeling_vqvae import VQVAEModel

__all__ = [
    "METADATA_KEY",
    "CLIError",
    "HelpFormatter",
    "Tokenizer",
    "add_model_arguments",
    "add_option",
    "first_line",
    "load_tokenizer",
    "note",
]

# The key of a .npz written by `encode` that holds the metadata, not codes.
METADATA_KEY = "__metadata__"


class CLIError(Exception):
    """An error the user can fix; `main` prints its message on one line and exits with status 1."""


def add_option(parser: argparse.ArgumentParser, *names: str, **kwargs) -> argparse.Action:
    """`parser.add_argument` with the long option spelled with underscores (`--batch_size`, as in the training
    scripts and transformers' `HfArgumentParser`); the hyphenated spelling (`--batch-size`) is accepted too
    and left out of `--help`."""
    long_names = [name for name in names if name.startswith("--")]
    aliases = [name.replace("_", "-") for name in long_names if "_" in name]
    action = parser.add_argument(*names, *aliases, **kwargs)
    action.hidden_aliases = frozenset(aliases)
    return action


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option once, under its underscore spelling (see `add_option`)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, "hidden_aliases", ())
        if hidden:
            action = copy.copy(action)
            action.option_strings = [name for name in action.option_strings if name not in hidden]
        return super()._format_action_invocation(action)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """`--model`, `--revision` and `--device`, shared by every subcommand that loads a tokenizer."""
    parser.add_argument(
        "--model", required=True, help="local folder (save_pretrained output) or Hub repo id of the tokenizer"
    )
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit (default: main)")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default: cpu)")


@dataclass
class Tokenizer:
    """A loaded model with its processor (an image processor or an audio feature extractor)."""

    model: object
    processor: object
    name: str

    @property
    def config(self):
        return self.model.config

    @property
    def modality(self) -> Modality:
        return modality_for(self.model.config)


def load_tokenizer(name: str, revision: str | None = None, device: str = "cpu") -> Tokenizer:
    """Load a `VQVAEModel` and its processor from a local folder or a Hub repo id, in eval mode."""
    import torch

    try:
        config = VQVAEConfig.from_pretrained(name, revision=revision)
    except (OSError, ValueError) as error:  # a missing folder or repo, or a name that is neither
        raise CLIError(
            f"cannot load a tokenizer from {name!r}: {first_line(error)} "
            "(pass a folder written by save_pretrained or a Hub repo id)"
        ) from error
    model = VQVAEModel.from_pretrained(name, revision=revision, config=config)
    processor_class = modality_for(config).processor_class
    try:
        processor = processor_class.from_pretrained(name, revision=revision)
    except OSError as error:
        raise CLIError(
            f"{name!r} has a model but no preprocessor_config.json; save the {processor_class.__name__} "
            "next to it (processor.save_pretrained(folder))"
        ) from error
    try:
        model = model.to(torch.device(device))
    except RuntimeError as error:
        raise CLIError(f"cannot use --device {device!r}: {first_line(error)}") from error
    return Tokenizer(model=model.eval(), processor=processor, name=name)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type name when it has none)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def an(word: str) -> str:
    """`word` with its indefinite article: "an image", "an audio", "a ..."."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def note(message: str) -> None:
    """A note for the user on stderr (stdout is for results)."""
    print(f"note: {message}", file=sys.stderr)
