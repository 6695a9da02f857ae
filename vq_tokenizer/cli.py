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
    except (OSError, ValueError) as error:  # a missing folder or repo, or a name that is neither
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
            f"{path} is {_an(kind)} file but {tokenizer.name!r} is {_an(tokenizer.modality)} tokenizer; "
            f"use {_an(kind)} tokenizer for it"
        )


def _an(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


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
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit (or float) greyscale: PIL's own conversion to 8 bits clips instead of scaling.
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if values.max() > 255 else 1.0
        image = Image.fromarray(np.clip(np.round(values / scale), 0, 255).astype(np.uint8), "L")
        _note(f"{path}: scaled {16 if scale > 1 else 8}-bit greyscale to 8 bits")
    elif image.mode not in ("L", "RGB", "RGBA", "LA"):
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
# decode


def read_codes(path: Path, modality: str) -> tuple[list[str], list[np.ndarray], list[dict]]:
    """Items of a codes file written by `encode` (or by hand): names, integer arrays, size info (may be {})."""
    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    grid_dims = 2 if modality == "image" else 1
    layout = "[h, w] or [N, h, w]" if modality == "image" else "[t] or [N, t]"
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CLIError(f"{path}: not a .npy/.npz codes file ({_first_line(error)})") from error
    if isinstance(loaded, np.ndarray):
        if loaded.ndim == grid_dims:
            arrays, names = [loaded], [path.stem]
        elif loaded.ndim == grid_dims + 1:
            arrays, names = list(loaded), [f"{path.stem}-{index}" for index in range(len(loaded))]
        else:
            raise CLIError(
                f"{path}: codes of shape {loaded.shape} do not fit {_an(modality)} tokenizer, which decodes {layout}"
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
            if info.get("modality", modality) != modality:
                raise CLIError(
                    f"{path} holds {info['modality']} codes but the tokenizer is for {modality}; decode with "
                    "the model that encoded them"
                )
        for name, array in zip(names, arrays, strict=True):
            if array.ndim != grid_dims:
                raise CLIError(
                    f"{path}: entry {name!r} has shape {array.shape}; {_an(modality)} tokenizer decodes {layout}"
                )
    if not arrays:
        raise CLIError(f"{path}: holds no codes")
    for name, array in zip(names, arrays, strict=True):
        if not np.issubdtype(array.dtype, np.integer):
            raise CLIError(f"{path}: entry {name!r} holds {array.dtype} values; codes are integers")
    return names, arrays, infos


def decode_item(codes: np.ndarray, info: dict, tokenizer: Tokenizer):
    """A PIL image or a `[C, T]` float32 waveform, cropped to the original size when `info` has it."""
    import torch

    device = next(tokenizer.model.parameters()).device
    with torch.no_grad():
        reconstruction = tokenizer.model.decode(torch.as_tensor(codes, dtype=torch.long, device=device)[None])
    reconstruction = reconstruction.reconstruction.float().cpu()
    if tokenizer.modality == "image":
        sizes = [(info["height"], info["width"])] if "height" in info else None
        return tokenizer.processor.postprocess(reconstruction, output_type="pil", original_sizes=sizes)[0]
    waveform = tokenizer.processor.postprocess(reconstruction)[0]
    return waveform[:, : info["num_samples"]] if "num_samples" in info else waveform


def _output_paths(output: Path, names: list[str], modality: str, file_format: str | None) -> list[Path]:
    suffixes = IMAGE_SUFFIXES if modality == "image" else AUDIO_SUFFIXES
    if len(names) == 1 and output.suffix:
        if output.suffix.lower() not in suffixes:
            raise CLIError(
                f"-o {output}: {_an(modality)} tokenizer writes {' '.join(suffixes)} files; change the suffix"
            )
        return [output]
    if output.suffix and not output.is_dir():
        raise CLIError(
            f"the codes hold {len(names)} items; pass a folder as -o (e.g. -o {output.with_suffix('')}/) and "
            "each is written there under its own name"
        )
    suffix = "." + (file_format or ("png" if modality == "image" else "wav")).lower().lstrip(".")
    if suffix not in suffixes:
        raise CLIError(f"--format {file_format}: {_an(modality)} tokenizer writes {' '.join(suffixes)}")
    paths = [output / Path(name).with_suffix(suffix) for name in names]
    if len(set(paths)) != len(paths):
        raise CLIError("two items would be written to the same file; rename the entries of the codes file")
    return paths


def run_decode(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.model, args.revision, args.device)
    names, arrays, infos = read_codes(Path(args.codes), tokenizer.modality)
    paths = _output_paths(Path(args.output), names, tokenizer.modality, args.format)
    for path, codes, info in zip(paths, arrays, infos, strict=True):
        decoded = decode_item(codes, info, tokenizer)
        path.parent.mkdir(parents=True, exist_ok=True)
        if tokenizer.modality == "image":
            try:
                decoded.save(path)
            except (OSError, ValueError, KeyError) as error:
                raise CLIError(f"cannot write {path}: {_first_line(error)}; try a .png output") from error
            print(f"wrote {path} ({decoded.width}x{decoded.height} px from {codes.size} codes)")
        else:
            from .audio import save_audio

            rate = tokenizer.config.sampling_rate
            save_audio(path, decoded, rate)
            print(f"wrote {path} ({decoded.shape[-1] / rate:.2f} s at {rate} Hz from {codes.size} codes)")


def add_decode_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "decode",
        help="codes (.npy/.npz) -> image/audio files",
        description=(
            "Decode codes written by `vq-tokenizer encode` (or any integer array: [h, w] or [N, h, w] for an "
            "image tokenizer, [t] or [N, t] for an audio one) back to images or audio."
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


# ---------------------------------------------------------------------------------------------------------
# eval


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()


def _media_files(folder: Path, modality: str) -> list[Path]:
    suffixes = IMAGE_SUFFIXES if modality == "image" else AUDIO_SUFFIXES
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise CLIError(
            f"{folder} holds no {modality} files ({' '.join(suffixes)}) and is not a saved dataset; "
            f"pass a folder of {modality} files or a datasets folder/id"
        )
    return files


def build_eval_loader(args: argparse.Namespace, tokenizer: Tokenizer):
    """(a DataLoader of processed batches, a description of the data) for a folder of files or a dataset."""
    from torch.utils.data import DataLoader

    from .data import (
        AUDIO_COLUMN_CANDIDATES,
        IMAGE_COLUMN_CANDIDATES,
        decode_audio_example,
        feature_extract_batch,
        find_column,
        load_audio_dataset,
        load_image_dataset,
        prepare_audio_column,
    )

    processor, modality = tokenizer.processor, tokenizer.modality
    batch_size = args.batch_size
    folder = Path(args.dataset)
    if folder.is_dir() and not _is_saved_dataset(folder):
        files = _media_files(folder, modality)[: args.max_samples]
        if modality == "image":
            from PIL import Image

            # One batch holds images of one size; sort by size so each batch is as full as it can be.
            sizes = []
            for path in files:
                try:
                    with Image.open(path) as image:
                        sizes.append(image.size)
                except OSError as error:
                    raise CLIError(f"{path}: cannot read it as an image ({_first_line(error)})") from error
            order = sorted(range(len(files)), key=lambda index: sizes[index])
            batches, current = [], []
            for index in order:
                if current and (len(current) == batch_size or sizes[current[0]] != sizes[index]):
                    batches.append(current)
                    current = []
                current.append(index)
            batches.append(current)

            def collate(paths):
                images = [load_image_file(path, tokenizer) for path in paths]
                return {"pixel_values": processor(images, return_tensors="pt").pixel_values}

            loader = DataLoader(files, batch_sampler=batches, collate_fn=collate)
        else:

            def collate(paths):
                batch = processor([str(path) for path in paths], return_tensors="pt")
                return {"input_values": batch["input_values"], "padding_mask": batch["padding_mask"]}

            loader = DataLoader(files, batch_size=batch_size, collate_fn=collate)
        return loader, f"{folder} ({len(files)} {modality} files)"

    load = load_image_dataset if modality == "image" else load_audio_dataset
    try:
        dataset = load(args.dataset, args.split, args.dataset_config)
    except KeyError as error:
        raise CLIError(f"{args.dataset} has no split {args.split!r}; pick one with --split") from error
    except FileNotFoundError as error:
        raise CLIError(
            f"no dataset {args.dataset!r}: {_first_line(error)} (pass a folder of files, a save_to_disk "
            "folder or a datasets id)"
        ) from error
    if args.max_samples:
        dataset = dataset.select(range(min(len(dataset), args.max_samples)))
    if modality == "image":
        column = find_column(dataset.column_names, IMAGE_COLUMN_CANDIDATES, "image", args.column)

        def collate(examples):
            images = [example[column] for example in examples]
            return {"pixel_values": processor(images, return_tensors="pt").pixel_values}

    else:
        column = find_column(dataset.column_names, AUDIO_COLUMN_CANDIDATES, "audio", args.column)
        dataset = prepare_audio_column(dataset, column)

        def collate(examples):
            decoded = [decode_audio_example(ex[column], ex.get("sampling_rate")) for ex in examples]
            arrays, rates = [array for array, _ in decoded], [rate for _, rate in decoded]
            batch = feature_extract_batch(processor, arrays, rates)
            return {"input_values": batch["input_values"], "padding_mask": batch["padding_mask"]}

    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    return loader, f"{args.dataset} [{args.split}] ({len(dataset)} items)"


def run_eval(args: argparse.Namespace) -> dict:
    from accelerate import Accelerator

    from .evaluation import evaluate

    accelerator = Accelerator(cpu=args.device == "cpu")
    tokenizer = load_tokenizer(args.model, args.revision, str(accelerator.device))
    loader, description = build_eval_loader(args, tokenizer)
    loader = accelerator.prepare(loader)
    metrics = evaluate(accelerator, tokenizer.model, loader, tokenizer.processor, args.pictures, final=True)
    config = tokenizer.config
    if accelerator.is_main_process:
        print(f"model:   {args.model} ({tokenizer.modality}, K={config.codebook_size})")
        print(f"data:    {description}")
        rows = [
            ("psnr", "PSNR (dB)", ".2f"),
            ("ssim", "SSIM", ".4f"),
            ("si_snr", "SI-SNR (dB)", ".2f"),
            ("codebook_usage", "codebook usage", ".4f"),
            ("perplexity", "perplexity", ".1f"),
            ("tokens_per_image", "tokens per image", "d"),
            ("tokens_per_second", "tokens per second", "g"),
        ]
        for key, label, spec in rows:
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
    parser.add_argument("--dataset-config", default=None, help="configuration name of a Hub dataset")
    parser.add_argument("--column", default=None, help="image/audio column (default: found by name)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N items")
    parser.add_argument("--pictures", default=None, help="folder for the reconstruction/spectrogram pictures")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.set_defaults(handler=run_eval)


# ---------------------------------------------------------------------------------------------------------
# The parser and the entry point

COMMANDS: list[Callable] = [add_encode_command, add_decode_command, add_eval_command]
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
