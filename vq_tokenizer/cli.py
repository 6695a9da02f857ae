"""The `vq-tokenizer` command line: turn image and audio files into codes and back, and evaluate a tokenizer.

    vq-tokenizer encode photo.png speech.wav ... -o codes.npz --model MODEL
    vq-tokenizer decode codes.npz -o out/ --model MODEL
    vq-tokenizer eval --model MODEL --dataset FOLDER_OR_DATASET [--split test]

`MODEL` is a local folder written by `save_pretrained` (e.g. a `training/train_vqvae.py` output) or a Hub
repo id; the image processor or feature extractor is loaded from the same place.

Each subcommand is one `add_<name>_command(subparsers)` function that adds its parser and sets
`handler=`; `build_parser` calls them in order, so a new subcommand is one more function in `COMMANDS`.
Handlers raise `CLIError` (or the library's `ValueError`/`OSError`) and `main` turns any error into one
line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .prior import add_encode_dataset_command

__all__ = [
    "AUDIO_SUFFIXES",
    "COMMANDS",
    "IMAGE_SUFFIXES",
    "CLIError",
    "Tokenizer",
    "add_model_arguments",
    "build_parser",
    "load_tokenizer",
    "main",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
# Keys of a .npz written by `encode` that are not codes.
METADATA_KEY = "__metadata__"
EXIT_ERROR = 1


class CLIError(Exception):
    """An error the user can fix; `main` prints its message on one line and exits with status 1."""


# ---------------------------------------------------------------------------------------------------------
# Shared helpers (for every subcommand)


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
    def modality(self) -> str:
        return self.model.config.modality


def load_tokenizer(name: str, revision: str | None = None, device: str = "cpu") -> Tokenizer:
    """Load a `VQVAEModel` and its processor from a local folder or a Hub repo id, in eval mode."""
    import torch

    from . import VQVAEConfig, VQVAEFeatureExtractor, VQVAEImageProcessor, VQVAEModel

    try:
        config = VQVAEConfig.from_pretrained(name, revision=revision)
    except OSError as error:
        raise CLIError(
            f"cannot load a tokenizer from {name!r}: {_first_line(error)} "
            "(pass a folder written by save_pretrained or a Hub repo id)"
        ) from error
    model = VQVAEModel.from_pretrained(name, revision=revision, config=config)
    processor_class = VQVAEImageProcessor if config.modality == "image" else VQVAEFeatureExtractor
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
        raise CLIError(f"cannot use --device {device!r}: {_first_line(error)}") from error
    return Tokenizer(model=model.eval(), processor=processor, name=name)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _kind_of_file(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    raise CLIError(
        f"{path}: unknown file type {path.suffix or '(no suffix)'!r}; images: "
        f"{' '.join(IMAGE_SUFFIXES)}; audio: {' '.join(AUDIO_SUFFIXES)} (convert others first, e.g. "
        "`ffmpeg -i in.m4a out.wav` or `convert in.heic out.png`)"
    )


def _check_kind(path: Path, tokenizer: Tokenizer) -> None:
    kind = _kind_of_file(path)
    if kind != tokenizer.modality:
        raise CLIError(
            f"{path} is an {kind} file but {tokenizer.name!r} is an {tokenizer.modality} tokenizer; "
            f"use an {kind} tokenizer for it"
        )


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def load_image_file(path: Path, tokenizer: Tokenizer):
    """A PIL image, converted to the model's channels by the processor later; notes what changes."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGBA" if opened.mode in ("RGBA", "LA", "P") else opened.mode)
            image.load()
    except FileNotFoundError as error:
        raise CLIError(f"{path}: no such file") from error
    except (UnidentifiedImageError, OSError) as error:
        raise CLIError(
            f"{path}: cannot read it as an image ({_first_line(error)}); convert it to PNG first"
        ) from error
    if image.mode not in ("L", "RGB", "RGBA", "LA"):
        image = image.convert("RGB")
    channels = 1 if image.mode in ("L", "LA") else 3
    wanted = tokenizer.config.in_channels
    if channels != wanted:
        _note(f"{path}: converted {image.mode} to {'greyscale' if wanted == 1 else 'RGB'} for the model")
    return image


def load_audio_file(path: Path, tokenizer: Tokenizer) -> np.ndarray:
    """`[C, T]` float32 at the model's rate and channels; notes a resampling or channel conversion."""
    from .audio import load_audio

    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    config = tokenizer.config
    try:
        array, rate = load_audio(path)
    except ValueError as error:
        raise CLIError(_first_line(error)) from error
    if rate != config.sampling_rate:
        _note(f"{path}: resampled {rate} Hz to the model's {config.sampling_rate} Hz")
    if array.shape[0] != config.in_channels:
        if array.shape[0] > 2 and config.in_channels == 2:
            raise CLIError(
                f"{path}: has {array.shape[0]} channels and the model takes stereo; downmix it first "
                "(e.g. `sox in.wav -c 2 out.wav`)"
            )
        _note(f"{path}: converted {array.shape[0]} channel(s) to the model's {config.in_channels}")
        from .audio import convert_channels

        array = convert_channels(array, config.in_channels)
    if rate != config.sampling_rate:
        from .audio import resample

        array = np.clip(resample(array, rate, config.sampling_rate), -1.0, 1.0)
    return array


# ---------------------------------------------------------------------------------------------------------
# encode


def encode_file(path: Path, tokenizer: Tokenizer) -> tuple[np.ndarray, dict]:
    """Codes of one file (`[h, w]` for an image, `[t]` for audio) and what `decode` needs to undo padding."""
    import torch

    _check_kind(path, tokenizer)
    device = next(tokenizer.model.parameters()).device
    if tokenizer.modality == "image":
        image = load_image_file(path, tokenizer)
        inputs = tokenizer.processor(image, return_tensors="pt")
        with torch.no_grad():
            codes = tokenizer.model.encode(pixel_values=inputs.pixel_values.to(device)).codes[0]
        height, width = (int(v) for v in inputs["original_sizes"][0])
        info = {"modality": "image", "height": height, "width": width}
    else:
        array = load_audio_file(path, tokenizer)
        inputs = tokenizer.processor(array, sampling_rate=tokenizer.config.sampling_rate, return_tensors="pt")
        with torch.no_grad():
            codes = tokenizer.model.encode(input_values=inputs.input_values.to(device)).codes[0]
        info = {
            "modality": "audio",
            "num_samples": int(array.shape[-1]),
            "sampling_rate": int(tokenizer.config.sampling_rate),
        }
    return codes.cpu().numpy().astype(np.int64), info


def _entry_names(paths: Sequence[Path]) -> list[str]:
    """Unique .npz keys: the file names, with the parent folders added where names repeat."""
    names = [path.name for path in paths]
    if len(set(names)) == len(names):
        return names
    names = [path.as_posix().lstrip("/") for path in paths]
    if len(set(names)) != len(names):
        raise CLIError("the same input file is given twice; pass each file once")
    return names


def write_codes(output: Path, names: list[str], codes: list[np.ndarray], infos: list[dict], model: str):
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
        _check_kind(path, tokenizer)
    names = _entry_names(paths)
    all_codes, infos = [], []
    for path, name in zip(paths, names, strict=True):
        codes, info = encode_file(path, tokenizer)
        all_codes.append(codes)
        infos.append(info)
        shape = "x".join(str(s) for s in codes.shape)
        if info["modality"] == "audio":
            seconds = info["num_samples"] / info["sampling_rate"]
            rate = tokenizer.config.frame_rate
            print(f"{name}: {seconds:.2f} s -> {codes.size} codes [{shape}] ({rate:g} tokens/s)")
        else:
            print(f"{name}: {info['width']}x{info['height']} px -> {codes.size} codes [{shape}]")
    write_codes(output, names, all_codes, infos, args.model)
    print(f"wrote {output} ({sum(c.size for c in all_codes)} codes from {len(paths)} file(s))")


def add_encode_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "encode",
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


# ---------------------------------------------------------------------------------------------------------
# The parser and the entry point

COMMANDS: list[Callable] = [add_encode_command]
COMMANDS.append(add_encode_dataset_command)  # defined in prior.py, beside encode_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vq-tokenizer",
        description="Tokenize images and audio with a trained VQ-VAE tokenizer.",
        epilog="Run `vq-tokenizer COMMAND --help` for the options of each command.",
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error (for bug reports)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # stdout is for results; no "Loading weights" bars
    try:
        args.handler(args)
    except KeyboardInterrupt:
        print("vq-tokenizer: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - one line for the user; --traceback for the details
        if args.traceback:
            raise
        print(f"vq-tokenizer {args.command}: error: {_first_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
