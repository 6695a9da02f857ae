"""`vq-tokenizer encode-dataset`: one split of a dataset -> a `codes` column (save_to_disk and/or push_to_hub)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data import load_split
from ..dataset_encoding import encode_dataset
from ..token_mapping import CodeTokenMapping
from .common import CLIError, HelpFormatter, add_model_arguments, add_option, load_tokenizer

__all__ = ["add_encode_dataset_command"]


def run_encode_dataset(args: argparse.Namespace) -> None:
    if args.output_dir is None and args.push_to_hub is None:
        raise CLIError("pass -o/--output_dir, --push_to_hub REPO_ID, or both")
    tokenizer = load_tokenizer(args.model, args.revision, args.device)
    model, processor, modality = tokenizer.model, tokenizer.processor, tokenizer.modality
    dataset = load_split(
        args.dataset, args.split, args.dataset_config, folder_builder=modality.folder_builder
    )
    if args.max_samples:
        dataset = dataset.select(range(min(len(dataset), args.max_samples)))
    column = modality.find_column(dataset.column_names, args.column)
    mapping = None
    if args.offset is not None or args.bos_token_id is not None or args.eos_token_id is not None:
        mapping = CodeTokenMapping(
            model.config.codebook_size,
            # The grid of the first item when all share it (images); None when lengths vary (audio): then
            # `ids_to_codes` gives flat codes.
            grid_shape=modality.grid_of(processor, dataset[0][column], model.config),
            offset=args.offset or 0,
            bos_token_id=args.bos_token_id,
            eos_token_id=args.eos_token_id,
        )
    encoded = encode_dataset(
        model,
        processor,
        dataset,
        column,
        batch_size=args.batch_size,
        mapping=mapping,
        output_dir=args.output_dir,
        push_to_hub=args.push_to_hub,
        token=args.token,
        private=args.private or None,
        overwrite=args.overwrite,
        desc=f"Encoding {args.dataset}[{args.split}]",
    )
    places = [str(Path(args.output_dir).resolve())] if args.output_dir else []
    places += [f"hub dataset {args.push_to_hub}"] if args.push_to_hub else []
    print(f"{len(encoded)} rows, columns {encoded.column_names} -> {' and '.join(places)}")


def add_encode_dataset_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "encode-dataset",
        formatter_class=HelpFormatter,
        help="a whole dataset split -> a `codes` column (save_to_disk and/or push_to_hub)",
        description=(
            "Tokenise one split of a dataset (fashion_mnist, an imagefolder or save_to_disk folder, or a Hub "
            "dataset id) with a tokenizer: writes a `codes` column (and `input_ids` with --offset, "
            "--bos_token_id or --eos_token_id, plus token_mapping.json), keeps the other columns (labels), "
            "drops the images or audio. Re-running over a current output folder reuses it."
        ),
        epilog="Example: vq-tokenizer encode-dataset --model out/fmnist --dataset fashion_mnist --split train "
        "-o out/codes/train --offset 10",
    )
    add_model_arguments(parser)
    parser.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist, a folder or a datasets id")
    add_option(parser, "--dataset_config", default=None, help="the dataset's configuration name, if any")
    parser.add_argument("--split", default="train")
    add_option(parser, "-o", "--output_dir", default=None, help="folder to save_to_disk into")
    add_option(parser, "--push_to_hub", default=None, metavar="REPO_ID", help="dataset repo to push to")
    parser.add_argument("--private", action="store_true", help="create the Hub dataset repo private")
    parser.add_argument("--token", default=None, help="Hub token (default: the cached login or HF_TOKEN)")
    parser.add_argument("--column", default=None, help="image/audio column (default: found by name)")
    add_option(parser, "--batch_size", type=int, default=256)
    add_option(parser, "--max_samples", type=int, default=None, help="only the first N rows")
    parser.add_argument("--offset", type=int, default=None, help="also write input_ids = offset + code")
    add_option(parser, "--bos_token_id", type=int, default=None, help="begin-of-image id for input_ids")
    add_option(parser, "--eos_token_id", type=int, default=None, help="end-of-image id for input_ids")
    parser.add_argument("--overwrite", action="store_true", help="recompute even if the output is current")
    parser.set_defaults(handler=run_encode_dataset)
