"""`vq-tokenizer encode`: image or audio files -> codes in a .npy or .npz file."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..modalities import Modality, modality_of_file
from .common import (
    METADATA_KEY,
    CLIError,
    HelpFormatter,
    Tokenizer,
    add_model_arguments,
    an,
    load_tokenizer,
    note,
)

__all__ = ["add_encode_command", "encode_file", "write_codes"]


def check_file_kind(path: Path, tokenizer: Tokenizer) -> Modality:
    """The tokenizer's modality, if `path` is one of its files; a CLIError that says which tokenizer fits."""
    try:
        kind = modality_of_file(path)
    except ValueError as error:
        raise CLIError(str(error)) from error
    if kind is not tokenizer.modality:
        raise CLIError(
            f"{path} is {an(kind.name)} file but {tokenizer.name!r} is {an(tokenizer.modality.name)} tokenizer; "
            f"use {an(kind.name)} tokenizer for it"
        )
    return kind


def encode_file(path: Path, tokenizer: Tokenizer) -> tuple[np.ndarray, dict]:
    """Codes of one file (`[h, w]` for an image, `[t]` for audio; `[Q, h, w]` / `[Q, t]` for a residual
    quantizer) and what `decode` needs to undo padding."""
    import torch

    modality = check_file_kind(path, tokenizer)
    item = modality.read_file(path, tokenizer.config, note=note)
    inputs, info = modality.file_inputs(tokenizer.processor, item, tokenizer.config)
    device = next(tokenizer.model.parameters()).device
    with torch.no_grad():
        codes = tokenizer.model.encode(**{modality.input_name: inputs[modality.input_name].to(device)}).codes[
            0
        ]
    return codes.cpu().numpy().astype(np.int64), {"modality": modality.name, **info}


def _entry_names(paths: Sequence[Path]) -> list[str]:
    """Unique .npz keys: the file names, with the parent folders added where names repeat."""
    names = [path.name for path in paths]
    if len(set(names)) == len(names):
        return names
    names = [path.as_posix().lstrip("/") for path in paths]
    if len(set(names)) != len(names):
        raise CLIError("the same input file is given twice; pass each file once")
    return names


def write_codes(
    output: Path, names: list[str], codes: list[np.ndarray], infos: list[dict], model: str
) -> None:
    """`.npy`: codes only (one input, or inputs with equal code shapes, stacked); `.npz`: one entry per input
    plus the sizes `decode` crops back to."""
    suffix = output.suffix.lower()
    if suffix == ".npy":
        if len(codes) == 1:
            array = codes[0]
        elif len({c.shape for c in codes}) == 1:
            array = np.stack(codes)
        else:
            raise CLIError(
                f"the inputs give codes of different shapes ({sorted({c.shape for c in codes})}), which one "
                ".npy cannot hold; write a .npz instead (-o codes.npz)"
            )
        output.parent.mkdir(parents=True, exist_ok=True)
        np.save(output, array)
        return
    if suffix != ".npz":
        raise CLIError(f"-o {output}: write codes to a .npy or .npz file")
    metadata = {"model": model, "items": dict(zip(names, infos, strict=True))}
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(output, **dict(zip(names, codes, strict=True)), **{METADATA_KEY: np.array(json.dumps(metadata))})


def run_encode(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.model, args.revision, args.device)
    paths = [Path(p) for p in args.inputs]
    output = Path(args.output)
    if output.suffix.lower() not in (".npy", ".npz"):
        raise CLIError(f"-o {output}: write codes to a .npy or .npz file")
    for path in paths:
        check_file_kind(path, tokenizer)
    names = _entry_names(paths)
    all_codes, infos = [], []
    for path, name in zip(paths, names, strict=True):
        codes, info = encode_file(path, tokenizer)
        all_codes.append(codes)
        infos.append(info)
        print(f"{name}: {tokenizer.modality.describe_encoding(info, codes, tokenizer.config)}")
    write_codes(output, names, all_codes, infos, args.model)
    print(f"wrote {output} ({sum(c.size for c in all_codes)} codes from {len(paths)} file(s))")


def add_encode_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "encode",
        formatter_class=HelpFormatter,
        help="image/audio files -> codes (.npy/.npz)",
        description=(
            "Encode image files (PNG, JPEG, ...) or audio files (WAV, FLAC, OGG, ...) into codes. Images are "
            "converted to the model's channels; audio is resampled to the model's sampling rate and "
            "converted to its channels (a note on stderr says so). Each file is encoded on its own, so "
            "inputs may differ in size."
        ),
        epilog=(
            "Output: -o codes.npy holds the codes of one input ([h, w] for an image, [t] for audio) or, for "
            "several inputs whose codes have the same shape, the stack [N, ...]. -o codes.npz holds one "
            "int64 array per input, keyed by its file name (with its folders where names repeat), and a "
            f"'{METADATA_KEY}' JSON entry with each input's original size, so `decode` crops the padding "
            "away; use .npz for several inputs of different sizes."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="IN", help="image or audio files")
    parser.add_argument("-o", "--output", required=True, help="codes.npy or codes.npz")
    add_model_arguments(parser)
    parser.set_defaults(handler=run_encode)
