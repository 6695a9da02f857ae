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

__all__ = ["add_eval_command", "build_eval_loader", "format_speech_table"]


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
    # Rows carry their group (audio: the `speaker`/`source` columns -> synthetic / recorded / noise).
    collate = functools.partial(
        modality.collate_examples, tokenizer.processor, column=column, with_groups=True
    )
    loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate)
    return loader, f"{args.dataset} [{args.split}] ({len(dataset)} items)"


# Figures `eval` prints, in order, when the modality reports them: key, label, format.
_ROWS = [
    ("psnr", "PSNR (dB)", ".2f"),
    ("ssim", "SSIM", ".4f"),
    ("si_snr", "SI-SNR (dB)", ".2f"),
    ("stoi", "STOI", ".3f"),
    ("pesq", "PESQ (wideband)", ".3f"),
    ("mel_l1", "log-mel L1", ".3f"),
    ("codebook_usage", "codebook usage", ".4f"),
    ("perplexity", "perplexity", ".1f"),
    ("tokens_per_image", "tokens per image", "d"),
    ("tokens_per_second", "tokens per second", "g"),
]


def format_speech_table(rows: list[dict]) -> list[str]:
    """`metrics["speech_table"]` as aligned text lines: a header, then one line per bitrate x clip group."""
    lines = [
        f"{'levels':>6} {'kbit/s':>7}  {'group':<10} {'clips':>5} {'SI-SNR dB':>10} {'STOI':>6} "
        f"{'PESQ':>6} {'scored':>7} {'mel L1':>7}"
    ]
    for row in rows:
        lines.append(
            f"{row['levels']:>6} {row['kbps']:>7.3g}  {row['group']:<10} {row['items']:>5} "
            f"{row['si_snr']:>10.2f} {row['stoi']:>6.3f} {row['pesq']:>6.2f} "
            f"{str(row.get('pesq_items', row['items'])) + '/' + str(row['items']):>7} {row['mel_l1']:>7.3f}"
        )
    return lines


def run_eval(args: argparse.Namespace) -> dict:
    from accelerate import Accelerator

    from ..evaluation import evaluate
    from ..modalities.base import level_counts

    accelerator = Accelerator(cpu=args.device == "cpu")
    tokenizer = load_tokenizer(args.model, args.revision, str(accelerator.device))
    config = tokenizer.config
    if args.num_quantizers is not None:
        if tokenizer.modality.table_key is None:
            raise CLIError(f"--num_quantizers is for audio tokenizers; {args.model} is an image tokenizer")
        try:
            level_counts(config, args.num_quantizers)
        except ValueError as error:
            raise CLIError(f"--num_quantizers: {error}") from error
    loader, description = build_eval_loader(args, tokenizer)
    loader = accelerator.prepare(loader)
    metrics = evaluate(
        accelerator,
        tokenizer.model,
        loader,
        tokenizer.processor,
        args.pictures,
        final=True,
        num_quantizers=args.num_quantizers,
    )
    if accelerator.is_main_process:
        print(f"model:   {args.model} ({tokenizer.modality.name}, K={config.codebook_size})")
        print(f"data:    {description}")
        for key, label, spec in _ROWS:
            if key in metrics:
                extra = ""
                if key == "codebook_usage":
                    extra = f" ({round(metrics[key] * config.codebook_size)} of {config.codebook_size} codes)"
                if (
                    key == "pesq"
                    and metrics.get("pesq_items", metrics["num_eval_items"]) < metrics["num_eval_items"]
                ):
                    extra = f" (mean of the {metrics['pesq_items']} of {metrics['num_eval_items']} clips it scores)"
                print(f"{label + ':':<19}{metrics[key]:{spec}}{extra}")
        if metrics.get("speech_table"):
            print("per bitrate and clip group (PESQ: mean over the clips it scores, `scored` of them):")
            for line in format_speech_table(metrics["speech_table"]):
                print("  " + line)
        if args.json:
            Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
            print(f"wrote {args.json}")
        if args.pictures:
            print(f"pictures in {args.pictures}")
    # Tear the process group down on every rank before exit: a gloo group left to the interpreter's
    # shutdown aborts a rank ("terminate called without an active exception").
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def add_eval_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        formatter_class=HelpFormatter,
        help="reconstruction quality and codebook use on a dataset",
        description=(
            "Encode and decode a dataset and print PSNR/SSIM (images) or SI-SNR, STOI, wideband PESQ and "
            "log-mel L1 (audio), codebook usage and perplexity (vq_tokenizer.evaluation.evaluate, the figures "
            "training reports). Audio also gets a table per bitrate (a residual quantizer decoded from its first "
            "n levels) and clip group (a dataset's speaker/source columns: synthetic voices, real recordings, "
            "noise)."
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
    parser.add_argument(
        "--json", default=None, help="also write the figures (and the table) to this JSON file"
    )
    add_option(
        parser,
        "--num_quantizers",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="audio: level counts to report, e.g. 3 6 12 (default: Q/4, Q/2, Q of a residual quantizer)",
    )
    parser.set_defaults(handler=run_eval)
