"""`vq-tokenizer eval`: reconstruction quality and codebook use of a tokenizer on a folder of files or a dataset."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from ..data import is_saved_dataset, load_split
from .common import (
    CLIError,
    HelpFormatter,
    Tokenizer,
    add_model_arguments,
    add_option,
    first_line,
    load_tokenizer,
    note,
)

__all__ = ["add_eval_command", "build_eval_loader"]


def _media_files(folder: Path, tokenizer: Tokenizer) -> list[Path]:
    modality = tokenizer.modality
    files = sorted(p for p in folder.rglob("*") if p.is_file() and modality.accepts(p))
    if not files:
        raise CLIError(
            f"{folder} holds no {modality.name} files ({' '.join(modality.file_suffixes)}) and is not a saved "
            f"dataset; pass a folder of {modality.name} files or a datasets folder/id"
        )
    return files


def _collate_files(tokenizer: Tokenizer, paths: list[Path]) -> dict:
    modality = tokenizer.modality
    return modality.batch(
        tokenizer.processor, [modality.read_file(path, tokenizer.config, note) for path in paths]
    )


def build_eval_loader(args: argparse.Namespace, tokenizer: Tokenizer):
    """(a DataLoader of processed batches, a description of the data) for a folder of files or a dataset."""
    from torch.utils.data import DataLoader

    modality = tokenizer.modality
    folder = Path(args.dataset)
    if folder.is_dir() and not is_saved_dataset(folder):
        files = _media_files(folder, tokenizer)[: args.max_samples]
        batches = modality.file_batches(files, args.batch_size)
        loader = DataLoader(
            files, batch_sampler=batches, collate_fn=functools.partial(_collate_files, tokenizer)
        )
        return loader, f"{folder} ({len(files)} {modality.name} files)"

    try:
        dataset = load_split(
            args.dataset, args.split, args.dataset_config, folder_builder=modality.folder_builder
        )
    except KeyError as error:
        raise CLIError(f"{args.dataset} has no split {args.split!r}; pick one with --split") from error
    except FileNotFoundError as error:
        raise CLIError(
            f"no dataset {args.dataset!r}: {first_line(error)} (pass a folder of files, a save_to_disk "
            "folder or a datasets id)"
        ) from error
    if args.max_samples:
        dataset = dataset.select(range(min(len(dataset), args.max_samples)))
    column = modality.find_column(dataset.column_names, args.column)
    dataset = modality.prepare_dataset(dataset, column)
    collate = functools.partial(modality.collate_examples, tokenizer.processor, column=column)
    loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate)
    return loader, f"{args.dataset} [{args.split}] ({len(dataset)} items)"


# Figures `eval` prints, in order, when the modality reports them: key, label, format.
_ROWS = [
    ("psnr", "PSNR (dB)", ".2f"),
    ("ssim", "SSIM", ".4f"),
    ("si_snr", "SI-SNR (dB)", ".2f"),
    ("codebook_usage", "codebook usage", ".4f"),
    ("perplexity", "perplexity", ".1f"),
    ("tokens_per_image", "tokens per image", "d"),
    ("tokens_per_second", "tokens per second", "g"),
]


def run_eval(args: argparse.Namespace) -> dict:
    from accelerate import Accelerator

    from ..evaluation import evaluate

    accelerator = Accelerator(cpu=args.device == "cpu")
    tokenizer = load_tokenizer(args.model, args.revision, str(accelerator.device))
    loader, description = build_eval_loader(args, tokenizer)
    loader = accelerator.prepare(loader)
    metrics = evaluate(accelerator, tokenizer.model, loader, tokenizer.processor, args.pictures, final=True)
    config = tokenizer.config
    if accelerator.is_main_process:
        print(f"model:   {args.model} ({tokenizer.modality.name}, K={config.codebook_size})")
        print(f"data:    {description}")
        for key, label, spec in _ROWS:
            if key in metrics:
                extra = ""
                if key == "codebook_usage":
                    extra = f" ({round(metrics[key] * config.codebook_size)} of {config.codebook_size} codes)"
                print(f"{label + ':':<19}{metrics[key]:{spec}}{extra}")
        if args.json:
            Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
            print(f"wrote {args.json}")
        if args.pictures:
            print(f"pictures in {args.pictures}")
    return metrics


def add_eval_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        formatter_class=HelpFormatter,
        help="reconstruction quality and codebook use on a dataset",
        description=(
            "Encode and decode a dataset and print PSNR/SSIM (images) or SI-SNR (audio), codebook usage and "
            "perplexity (vq_tokenizer.evaluation.evaluate, the figures training reports)."
        ),
        epilog=(
            "--dataset is a folder of image or audio files (searched recursively; audio is resampled and "
            "converted to the model's rate and channels), a folder written by datasets' save_to_disk (e.g. "
            "training/make_speech_corpus.py), `speech_corpus`, `fashion_mnist`, or a Hub dataset id."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--dataset", required=True, help="folder of files, saved dataset folder or datasets id"
    )
    parser.add_argument("--split", default="test", help="split of a dataset (default: test)")
    add_option(parser, "--dataset_config", default=None, help="configuration name of a Hub dataset")
    parser.add_argument("--column", default=None, help="image/audio column (default: found by name)")
    add_option(parser, "--batch_size", type=int, default=16)
    add_option(parser, "--max_samples", type=int, default=None, help="evaluate only the first N items")
    parser.add_argument("--pictures", default=None, help="folder for the reconstruction/spectrogram pictures")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.set_defaults(handler=run_eval)
