"""`vq-tokenizer decode`: codes (.npy/.npz) -> image or audio files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..modalities import Modality
from .common import (
    METADATA_KEY,
    CLIError,
    HelpFormatter,
    Tokenizer,
    add_model_arguments,
    an,
    first_line,
    load_tokenizer,
)

__all__ = ["add_decode_command", "decode_item", "read_codes"]


def read_codes(
    path: Path, modality: Modality, levels: int = 1
) -> tuple[list[str], list[np.ndarray], list[dict]]:
    """Items of a codes file written by `encode` (or by hand): names, integer arrays, size info (may be {}).

    An item is `[h, w]` / `[t]`, or `[Q, h, w]` / `[Q, t]` for a residual quantizer's `levels` > 1 (any first
    Q <= levels of them: fewer levels decode at a lower bitrate)."""
    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    item_layout = modality.code_layout if levels == 1 else f"[Q, {modality.code_layout[1:]}"
    grid_dims = modality.code_dims + (levels > 1)
    layout = f"{item_layout} or [N, {item_layout[1:]}"
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CLIError(f"{path}: not a .npy/.npz codes file ({first_line(error)})") from error
    if isinstance(loaded, np.ndarray):
        if loaded.ndim == grid_dims:
            arrays, names = [loaded], [path.stem]
        elif loaded.ndim == grid_dims + 1:
            arrays, names = list(loaded), [f"{path.stem}-{index}" for index in range(len(loaded))]
        else:
            raise CLIError(
                f"{path}: codes of shape {loaded.shape} do not fit {an(modality.name)} tokenizer, which decodes "
                f"{layout}"
            )
        infos = [{} for _ in arrays]
    else:
        with loaded:
            metadata = json.loads(str(loaded[METADATA_KEY])) if METADATA_KEY in loaded.files else {}
            names = [name for name in loaded.files if name != METADATA_KEY]
            arrays = [loaded[name] for name in names]
        items = metadata.get("items", {})
        infos = [items.get(name, {}) for name in names]
        for info in infos:
            if info.get("modality", modality.name) != modality.name:
                raise CLIError(
                    f"{path} holds {info['modality']} codes but the tokenizer is for {modality.name}; decode "
                    "with the model that encoded them"
                )
        for name, array in zip(names, arrays, strict=True):
            if array.ndim != grid_dims:
                raise CLIError(
                    f"{path}: entry {name!r} has shape {array.shape}; {an(modality.name)} tokenizer decodes "
                    f"{layout}"
                )
    if not arrays:
        raise CLIError(f"{path}: holds no codes")
    for name, array in zip(names, arrays, strict=True):
        if not np.issubdtype(array.dtype, np.integer):
            raise CLIError(f"{path}: entry {name!r} holds {array.dtype} values; codes are integers")
        if levels > 1 and not 1 <= array.shape[0] <= levels:
            raise CLIError(
                f"{path}: entry {name!r} has {array.shape[0]} levels; the tokenizer decodes 1 to {levels} ({layout})"
            )
    return names, arrays, infos


def decode_item(codes: np.ndarray, info: dict, tokenizer: Tokenizer):
    """A PIL image or a `[C, T]` float32 waveform, cropped to the original size when `info` has it."""
    import torch

    device = next(tokenizer.model.parameters()).device
    with torch.no_grad():
        reconstruction = tokenizer.model.decode(torch.as_tensor(codes, dtype=torch.long, device=device)[None])
    reconstruction = reconstruction.reconstruction.float().cpu()
    return tokenizer.modality.postprocess(tokenizer.processor, reconstruction, info)


def _output_paths(output: Path, names: list[str], modality: Modality, file_format: str | None) -> list[Path]:
    suffixes = modality.file_suffixes
    if len(names) == 1 and output.suffix:
        if output.suffix.lower() not in suffixes:
            raise CLIError(
                f"-o {output}: {an(modality.name)} tokenizer writes {' '.join(suffixes)} files; change the suffix"
            )
        return [output]
    if output.suffix and not output.is_dir():
        raise CLIError(
            f"the codes hold {len(names)} items; pass a folder as -o (e.g. -o {output.with_suffix('')}/) and "
            "each is written there under its own name"
        )
    suffix = "." + (file_format or modality.default_suffix).lower().lstrip(".")
    if suffix not in suffixes:
        raise CLIError(f"--format {file_format}: {an(modality.name)} tokenizer writes {' '.join(suffixes)}")
    paths = [output / Path(name).with_suffix(suffix) for name in names]
    if len(set(paths)) != len(paths):
        raise CLIError("two items would be written to the same file; rename the entries of the codes file")
    return paths


def run_decode(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.model, args.revision, args.device)
    modality = tokenizer.modality
    names, arrays, infos = read_codes(Path(args.codes), modality, tokenizer.config.codes_per_position)
    paths = _output_paths(Path(args.output), names, modality, args.format)
    for path, codes, info in zip(paths, arrays, infos, strict=True):
        decoded = decode_item(codes, info, tokenizer)
        path.parent.mkdir(parents=True, exist_ok=True)
        written = modality.write_file(path, decoded, tokenizer.config)
        print(f"wrote {path} ({written} from {codes.size} codes)")


def add_decode_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "decode",
        formatter_class=HelpFormatter,
        help="codes (.npy/.npz) -> image/audio files",
        description=(
            "Decode codes written by `vq-tokenizer encode` (or any integer array: [h, w] or [N, h, w] for an "
            "image tokenizer, [t] or [N, t] for an audio one; with a residual quantizer [Q, h, w] / [Q, t], "
            "where the first Q levels of the tokenizer's may be fewer) back to images or audio."
        ),
        epilog=(
            "One item: -o OUT.png|.jpg|... or OUT.wav|.flac|.ogg (the suffix picks the format). Several items "
            "(a .npz of several inputs, or a stacked .npy): -o is a folder and each item is written there "
            "under its entry name (stacked .npy: CODES-0, CODES-1, ...) with the --format suffix. A .npz from "
            "`encode` also restores each input's size (padding cropped away); a .npy decodes to the padded "
            "size (a multiple of the downsampling factor / hop length)."
        ),
    )
    parser.add_argument("codes", metavar="CODES", help="codes.npy or codes.npz")
    parser.add_argument("-o", "--output", required=True, help="output file, or a folder for several items")
    parser.add_argument(
        "--format",
        default=None,
        help="file type for several items: png (default for images), wav (audio), ...",
    )
    add_model_arguments(parser)
    parser.set_defaults(handler=run_decode)
