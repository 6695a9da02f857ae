"""`vq-tokenizer encode-dataset`: one split of a dataset -> parquet shards of codes and a dataset card, on one
process or many (`accelerate launch -m vq_tokenizer encode-dataset ...`), resumable, optionally pushed to the Hub."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from ..data import load_split
from ..dataset_encoding import DTYPES, ON_ERROR, write_encoded_dataset
from ..token_mapping import CodeTokenMapping
from .common import CLIError, HelpFormatter, add_model_arguments, add_option, first_line, load_tokenizer, note

__all__ = ["add_encode_dataset_command"]


def run_encode_dataset(args: argparse.Namespace) -> None:
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as `Accelerator` reads the launch
    if args.output_dir is None and args.push_to_hub is None:
        raise CLIError("pass -o/--output_dir, --push_to_hub REPO_ID, or both")
    if args.output_dir is None and state.num_processes > 1:
        raise CLIError("with several processes, pass -o/--output_dir: a folder every process can write to")
    tokenizer = load_tokenizer(args.model, args.revision, args.device or str(state.device))
    model, processor, modality = tokenizer.model, tokenizer.processor, tokenizer.modality
    dataset = load_split(
        args.dataset,
        args.split,
        args.dataset_config,
        streaming=args.streaming,
        folder_builder=modality.folder_builder,
    )
    name = str(Path(args.dataset).resolve()) if Path(args.dataset).exists() else args.dataset
    name += f" ({args.dataset_config})" if args.dataset_config else ""
    name += f"[{args.split}]"
    if args.max_samples:
        dataset = (
            dataset.take(args.max_samples)
            if args.streaming
            else dataset.select(range(min(len(dataset), args.max_samples)))
        )
        name += f", first {args.max_samples} rows"
    mapping = _mapping(args, dataset, tokenizer)
    keep = (
        [column.strip() for column in args.keep_columns.split(",") if column.strip()]
        if args.keep_columns
        else None
    )
    num_workers = args.num_workers
    if num_workers is None:  # the cores left over by the processes, up to 4 each
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        num_workers = min(4, max(0, cores // state.num_processes - 1))
    revision = _resolved_revision(args.model, args.revision) if state.is_main_process else args.revision
    with tempfile.TemporaryDirectory(prefix="vq-tokenizer-encoding-") as scratch:
        summary = write_encoded_dataset(
            model,
            processor,
            dataset,
            args.output_dir or scratch,
            split=args.split,
            column=args.column,
            mapping=mapping,
            keep_columns=keep,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            num_workers=num_workers,
            dtype=args.dtype,
            on_error=args.on_error,
            overwrite=args.overwrite,
            push_to_hub=args.push_to_hub,
            token=args.token,
            private=args.private or None,
            accelerator=state,
            source_name=name,
            tokenizer_revision=revision,
        )
    state.wait_for_everyone()
    state.destroy_process_group()  # before exit on every rank: a gloo group left to shutdown can abort one
    if not state.is_main_process:
        return
    if args.output_dir is None:
        summary.output_dir = None
    print(summary)
    if args.json:
        record = {**summary.__dict__, "items_per_second": summary.items_per_second}
        record["output_dir"] = str(summary.output_dir) if summary.output_dir else None
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


def _mapping(args: argparse.Namespace, dataset, tokenizer) -> CodeTokenMapping | None:
    """The code -> id mapping the options ask for; its grid is the first item's when every item shares it."""
    if args.offset is None and args.bos_token_id is None and args.eos_token_id is None:
        return None
    modality, config = tokenizer.modality, tokenizer.config
    column = modality.find_column(dataset.column_names or list(next(iter(dataset))), args.column)
    try:
        first = next(iter(dataset))[column]
        grid = modality.grid_of(tokenizer.processor, first, config)
    except Exception as error:  # noqa: BLE001 - the grid is optional: flat ids then
        note(f"no grid for the token mapping (the first item does not load: {first_line(error)})")
        grid = None
    return CodeTokenMapping(
        config.codebook_size,
        grid_shape=grid,  # None when items differ (audio): `ids_to_codes` then gives flat codes
        offset=args.offset or 0,
        bos_token_id=args.bos_token_id,
        eos_token_id=args.eos_token_id,
    )


def _resolved_revision(model: str, revision: str | None) -> str | None:
    """The commit a Hub tokenizer was loaded from, for the dataset card (the given revision if unknown)."""
    if Path(model).exists():
        return revision
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(model, revision=revision).sha or revision
    except Exception:  # noqa: BLE001 - offline, or a server without the API: the card names the given revision
        return revision


def add_encode_dataset_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "encode-dataset",
        formatter_class=HelpFormatter,
        help="a whole dataset split -> parquet shards of codes with a dataset card (and/or push_to_hub)",
        description=(
            "Tokenise one split of a dataset (fashion_mnist, speech_corpus, an imagefolder or save_to_disk folder, "
            "or a Hub dataset id; --streaming reads it as a stream, nothing downloaded whole) with a tokenizer. "
            "Writes OUTPUT/data/<split>-XXXXX-of-NNNNN.parquet with columns `index` (the source row), `codes`, "
            "`input_ids` (with --offset, --bos_token_id or --eos_token_id, plus token_mapping.json) and the "
            "other columns (labels, captions), and a README.md dataset card: `datasets.load_dataset(OUTPUT)` "
            "reads it. Run it under `accelerate launch [--num_processes N] -m vq_tokenizer encode-dataset ...` "
            "to share the rows between processes (the output is the same). Killed, the same command finishes "
            "the job; an output folder of another tokenizer or dataset is refused unless --overwrite."
        ),
        epilog="Example: vq-tokenizer encode-dataset --model out/fmnist --dataset fashion_mnist --split train "
        "-o out/codes --offset 10",
    )
    add_model_arguments(parser)
    for action in parser._actions:  # each process of a launch has its own device
        if "--device" in action.option_strings:
            action.default = None
            action.help = "torch device (default: the process's own under accelerate launch, else cpu)"
    parser.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist, a folder or a datasets id")
    add_option(parser, "--dataset_config", default=None, help="the dataset's configuration name, if any")
    parser.add_argument("--split", default="train")
    parser.add_argument("--streaming", action="store_true", help="read the dataset as a stream")
    add_option(parser, "-o", "--output_dir", default=None, help="folder for data/*.parquet and README.md")
    add_option(parser, "--push_to_hub", default=None, metavar="REPO_ID", help="dataset repo to upload to")
    parser.add_argument("--private", action="store_true", help="create the Hub dataset repo private")
    parser.add_argument("--token", default=None, help="Hub token (default: the cached login or HF_TOKEN)")
    parser.add_argument("--column", default=None, help="image/audio column (default: found by name)")
    add_option(
        parser, "--keep_columns", default=None, help="comma-separated columns to copy (default: all others)"
    )
    add_option(
        parser,
        "--batch_size",
        type=int,
        default=None,
        help="items per forward pass (default: 64 images or 4 clips on CPU, 4x on a GPU)",
    )
    add_option(parser, "--shard_size", type=int, default=None, help="rows per shard (default 10000)")
    add_option(
        parser,
        "--num_workers",
        type=int,
        default=None,
        help="decoding workers per process (default: spare cores, at most 4)",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="autocast for the network")
    add_option(
        parser,
        "--on_error",
        choices=ON_ERROR,
        default="raise",
        help="an item that does not decode: stop, or skip it (listed)",
    )
    add_option(parser, "--max_samples", type=int, default=None, help="only the first N rows")
    parser.add_argument("--offset", type=int, default=None, help="also write input_ids = offset + code")
    add_option(parser, "--bos_token_id", type=int, default=None, help="begin-of-image id for input_ids")
    add_option(parser, "--eos_token_id", type=int, default=None, help="end-of-image id for input_ids")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an output of another tokenizer or dataset"
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the summary here")
    parser.set_defaults(handler=run_encode_dataset)
