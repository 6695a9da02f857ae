"""The `vq-tokenizer` command line: turn image and audio files into codes and back, evaluate a tokenizer,
tokenise a dataset.

    vq-tokenizer encode photo.png speech.wav ... -o codes.npz --model MODEL
    vq-tokenizer decode codes.npz -o out/ --model MODEL
    vq-tokenizer eval --model MODEL --dataset FOLDER_OR_DATASET [--split test]
    vq-tokenizer encode-dataset --model MODEL --dataset DATASET --split train -o codes/train [--offset 10]

`MODEL` is a local folder written by `save_pretrained` (e.g. a `training/train_vqvae.py` output) or a Hub
repo id; the image processor or feature extractor is loaded from the same place. `python -m vq_tokenizer`
is the same command.

One module per subcommand (`encode`, `decode`, `eval`, `encode_dataset`), each with an
`add_<name>_command(subparsers)` that adds its parser and sets `handler=`; `common` holds what they share.
A new subcommand is one more module and one more entry in `COMMANDS`. Handlers raise `CLIError` (or the
library's `ValueError`/`OSError`) and `main` turns any error into one line on stderr and exit status 1.
Options are spelled with underscores (`--batch_size`), as in the training scripts; the hyphenated
spelling (`--batch-size`) is accepted too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .common import HelpFormatter, first_line
from .decode import add_decode_command
from .encode import add_encode_command
from .encode_dataset import add_encode_dataset_command
from .eval import add_eval_command

__all__ = ["COMMANDS", "build_parser", "main"]

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
COMMANDS: list[Callable] = [
    add_encode_command,
    add_decode_command,
    add_eval_command,
    add_encode_dataset_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vq-tokenizer",
        formatter_class=HelpFormatter,
        description="Tokenize images and audio with a trained VQ-VAE tokenizer.",
        epilog="Run `vq-tokenizer COMMAND --help` for the options of each command. Options are spelled with "
        "underscores (--batch_size); --batch-size works too.",
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error (for bug reports)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `vq-tokenizer` with `argv` (default: the process's arguments); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # stdout is for results; no "Loading weights" bars
    try:
        args.handler(args)
    except KeyboardInterrupt:
        print("vq-tokenizer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - one line for the user; --traceback for the details
        if args.traceback:
            raise
        print(f"vq-tokenizer {args.command}: error: {first_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    return 0
