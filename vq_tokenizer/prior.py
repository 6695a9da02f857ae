"""Codes for downstream transformers: codes <-> `input_ids`, a code-only logits processor, tokenised datasets.

A VQ-VAE turns an image into a grid of codes `[h, w]` (audio: `[t]`), each in `[0, K)`. A language model
reads one flat sequence of ids from a larger vocabulary. [`CodeTokenMapping`] is the bridge: it shifts the
codes by an `offset` (so the ids below it stay free for class or text tokens), flattens the grid row-major,
optionally wraps it in begin/end-of-image ids, and inverts all of that, with checks. It is saved as
`token_mapping.json` beside the tokenizer or the LM, so `CodeTokenMapping.from_pretrained(repo_id)` is
all a downstream user needs.

    mapping = CodeTokenMapping.from_config(tokenizer.config, grid_shape=(7, 7), offset=10)
    input_ids = mapping.codes_to_ids(codes)          # [B, 7, 7] -> [B, 49], values in [10, 10 + K)
    codes = mapping.ids_to_codes(input_ids)          # [B, 49]   -> [B, 7, 7]
    model.generate(..., logits_processor=[mapping.logits_processor()])   # samples code ids only

[`encode_dataset`] tokenises a whole `datasets.Dataset` with a tokenizer (`dataset.map(batched=True)`),
writing `codes` (and `input_ids`) and keeping the other columns, saved atomically with `save_to_disk`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessor

logger = logging.getLogger(__name__)

TOKEN_MAPPING_NAME = "token_mapping.json"
ENCODING_INFO_NAME = "vq_tokenizer_encoding.json"


def _optional_id(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative int or None, got {value!r}.")
    return int(value)


class CodeTokenMapping:
    r"""
    Maps VQ-VAE codes to a language model's `input_ids` and back.

    A code `c` becomes the id `offset + c`; a grid `[h, w]` (images) or `[t]` (audio) is flattened row-major
    (`'b h w -> b (h w)'`), then optionally framed as `[bos] + ids + [eos]`. Both directions work on
    batches and check their input.

    Args:
        codebook_size (`int`):
            Number of codes K; the image ids are `[offset, offset + K)`.
        grid_shape (`Sequence[int]`, *optional*):
            The code grid of one item, `(h, w)` or `(t,)`. Needed to turn ids back into a grid; without it
            (e.g. audio of varying length) `ids_to_codes` returns flat `[B, t]` codes.
        offset (`int`, *optional*, defaults to 0):
            Id of code 0. Ids below it (and at or above `offset + K`) are free for other tokens.
        bos_token_id (`int`, *optional*):
            Begin-of-image id put before the codes; must lie outside the image range.
        eos_token_id (`int`, *optional*):
            End-of-image id put after the codes; must lie outside the image range.

    Example:

    ```python
    >>> import torch
    >>> from vq_tokenizer.prior import CodeTokenMapping

    >>> mapping = CodeTokenMapping(codebook_size=512, grid_shape=(7, 7), offset=10, bos_token_id=522)
    >>> codes = torch.randint(0, 512, (2, 7, 7))
    >>> input_ids = mapping.codes_to_ids(codes)
    >>> input_ids.shape, mapping.image_token_range
    (torch.Size([2, 50]), (10, 522))
    >>> bool((mapping.ids_to_codes(input_ids) == codes).all())
    True
    ```
    """

    def __init__(
        self,
        codebook_size: int,
        grid_shape: Sequence[int] | None = None,
        offset: int = 0,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
    ):
        if (
            isinstance(codebook_size, bool)
            or not isinstance(codebook_size, (int, np.integer))
            or codebook_size < 1
        ):
            raise ValueError(f"`codebook_size` must be a positive int, got {codebook_size!r}.")
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
            raise ValueError(f"`offset` must be a non-negative int, got {offset!r}.")
        if grid_shape is not None:
            grid_shape = tuple(int(size) for size in grid_shape)
            if len(grid_shape) not in (1, 2) or any(size < 1 for size in grid_shape):
                raise ValueError(
                    f"`grid_shape` must be (h, w) for images or (t,) for audio with positive sizes, got {grid_shape}."
                )
        self.codebook_size = int(codebook_size)
        self.grid_shape = grid_shape
        self.offset = int(offset)
        self.bos_token_id = _optional_id("bos_token_id", bos_token_id)
        self.eos_token_id = _optional_id("eos_token_id", eos_token_id)
        low, high = self.image_token_range
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and low <= value < high:
                raise ValueError(
                    f"`{name}`={value} lies inside the image-token range [{low}, {high}); choose an id "
                    f"below {low} or at least {high}."
                )
        if self.bos_token_id is not None and self.bos_token_id == self.eos_token_id:
            raise ValueError(f"`bos_token_id` and `eos_token_id` are both {self.bos_token_id}; use two ids.")

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config,
        grid_shape: Sequence[int] | None = None,
        input_size: Sequence[int] | None = None,
        **kwargs,
    ) -> CodeTokenMapping:
        """A mapping for a [`VQVAEConfig`]: K from the config, the grid from `grid_shape` or from
        `input_size` (`(H, W)` pixels or `(T,)` samples, rounded up to the downsampling factor as the
        processors pad). Other keyword arguments (`offset`, `bos_token_id`, `eos_token_id`) as in `__init__`."""
        if grid_shape is not None and input_size is not None:
            raise ValueError("Pass `grid_shape` (codes) or `input_size` (pixels/samples), not both.")
        if input_size is not None:
            input_size = tuple(int(size) for size in input_size)
            if len(input_size) != config.spatial_dims:
                raise ValueError(
                    f"`input_size` must have {config.spatial_dims} value(s) for a {config.modality} model, "
                    f"got {input_size}."
                )
            grid_shape = tuple(math.ceil(size / config.downsampling_factor) for size in input_size)
        if grid_shape is not None and len(tuple(grid_shape)) != config.spatial_dims:
            raise ValueError(
                f"`grid_shape` must have {config.spatial_dims} value(s) for a {config.modality} model, "
                f"got {tuple(grid_shape)}."
            )
        return cls(config.codebook_size, grid_shape=grid_shape, **kwargs)

    def to_dict(self) -> dict:
        return {
            "codebook_size": self.codebook_size,
            "grid_shape": list(self.grid_shape) if self.grid_shape is not None else None,
            "offset": self.offset,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }

    @classmethod
    def from_dict(cls, values: dict) -> CodeTokenMapping:
        known = {"codebook_size", "grid_shape", "offset", "bos_token_id", "eos_token_id"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown keys in a token mapping: {unknown}; expected some of {sorted(known)}.")
        return cls(**values)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `token_mapping.json` into `save_directory` (created if needed); returns the file."""
        directory = Path(save_directory)
        if directory.is_file():
            raise ValueError(f"{directory} is a file; pass a folder (e.g. the tokenizer's).")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / TOKEN_MAPPING_NAME
        partial = path.with_name(f".{TOKEN_MAPPING_NAME}.{os.getpid()}")
        partial.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(partial, path)
        return path

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> CodeTokenMapping:
        """Read `token_mapping.json` from a folder, or download it from a Hub repo id (`hf_hub_download`)."""
        path = Path(pretrained_model_name_or_path)
        if path.is_dir():
            file = path / TOKEN_MAPPING_NAME
            if not file.is_file():
                raise FileNotFoundError(
                    f"{path} has no {TOKEN_MAPPING_NAME}; write one with `CodeTokenMapping(...).save_pretrained"
                    f"({str(path)!r})` or build one with `CodeTokenMapping.from_config(model.config, grid_shape=...)`."
                )
        else:
            from huggingface_hub import hf_hub_download

            file = Path(
                hf_hub_download(
                    str(pretrained_model_name_or_path),
                    TOKEN_MAPPING_NAME,
                    revision=revision,
                    token=token,
                    cache_dir=cache_dir,
                )
            )
        return cls.from_dict(json.loads(file.read_text()))

    def push_to_hub(
        self, repo_id: str, token: str | None = None, revision: str | None = None, private: bool | None = None
    ) -> str:
        """Upload `token_mapping.json` to a model repo (created if missing); returns the commit URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            file = self.save_pretrained(folder)
            info = api.upload_file(
                path_or_fileobj=str(file),
                path_in_repo=TOKEN_MAPPING_NAME,
                repo_id=repo_id,
                revision=revision,
                commit_message="Upload token mapping",
            )
        return str(info)

    # -- sizes ----------------------------------------------------------------------------------------------
    @property
    def image_token_range(self) -> tuple[int, int]:
        """`(first, end)`: the ids of codes are `first <= id < end` (end exclusive)."""
        return self.offset, self.offset + self.codebook_size

    @property
    def code_token_ids(self) -> list[int]:
        """Every id that stands for a code, in code order."""
        return list(range(*self.image_token_range))

    @property
    def num_codes_per_item(self) -> int | None:
        """h * w (or t): codes in one item, when the grid is fixed."""
        return math.prod(self.grid_shape) if self.grid_shape is not None else None

    @property
    def sequence_length(self) -> int | None:
        """Ids per item: the codes plus bos/eos when set."""
        n = self.num_codes_per_item
        return None if n is None else n + (self.bos_token_id is not None) + (self.eos_token_id is not None)

    @property
    def min_vocab_size(self) -> int:
        """The smallest LM vocabulary that holds every id this mapping emits."""
        ids = [self.offset + self.codebook_size, (self.bos_token_id or 0) + 1, (self.eos_token_id or 0) + 1]
        return max(ids)

    # -- conversions ----------------------------------------------------------------------------------------
    def codes_to_ids(self, codes: torch.Tensor | np.ndarray | Sequence) -> torch.LongTensor:
        """Codes `[B, h, w]` or `[B, t]` (or one item without the batch axis) -> `input_ids` `[B, L]`.

        `L = h * w (+1 with bos) (+1 with eos)`. Codes must lie in `[0, K)`; with a fixed `grid_shape` the
        items must have that shape.
        """
        codes = torch.as_tensor(codes)
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"`codes` must be integers, got {codes.dtype}.")
        if self.grid_shape is not None:
            ndim = len(self.grid_shape)
            if codes.dim() == ndim:
                codes = codes[None]
            if tuple(codes.shape[1:]) != self.grid_shape:
                raise ValueError(
                    f"`codes` must have shape [B, {', '.join(map(str, self.grid_shape))}] for this mapping "
                    f"(grid_shape={self.grid_shape}), got {tuple(codes.shape)}."
                )
        elif codes.dim() == 1:
            codes = codes[None]
        elif codes.dim() not in (2, 3):
            raise ValueError(f"`codes` must have shape [B, h, w] or [B, t], got {tuple(codes.shape)}.")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            bad = torch.unique(codes[(codes < 0) | (codes >= self.codebook_size)])
            raise ValueError(
                f"`codes` must lie in [0, {self.codebook_size - 1}] (codebook_size={self.codebook_size}); "
                f"got {_preview(bad)}. Are they ids already (offset {self.offset})?"
            )
        ids = codes.reshape(codes.shape[0], -1).long() + self.offset
        parts = []
        if self.bos_token_id is not None:
            parts.append(ids.new_full((ids.shape[0], 1), self.bos_token_id))
        parts.append(ids)
        if self.eos_token_id is not None:
            parts.append(ids.new_full((ids.shape[0], 1), self.eos_token_id))
        return torch.cat(parts, dim=1) if len(parts) > 1 else ids

    def ids_to_codes(
        self, input_ids: torch.Tensor | np.ndarray | Sequence, grid_shape: Sequence[int] | None = None
    ) -> torch.LongTensor:
        """`input_ids` `[B, L]` (or `[L]`) -> codes `[B, *grid_shape]` (`[B, t]` without a grid shape).

        bos/eos, when the mapping has them, must be at the ends and are removed; every other id must be in
        `image_token_range`, and the number of codes must match the grid. `grid_shape` overrides the
        mapping's own (e.g. for audio of another length).
        """
        ids = torch.as_tensor(input_ids)
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"`input_ids` must be integers, got {ids.dtype}.")
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2:
            raise ValueError(f"`input_ids` must have shape [B, L], got {tuple(ids.shape)}.")
        ids = ids.long()
        for name, position in (("bos_token_id", 0), ("eos_token_id", -1)):
            special = getattr(self, name)
            if special is None:
                continue
            if ids.shape[1] == 0 or not bool((ids[:, position] == special).all()):
                where = "first" if position == 0 else "last"
                raise ValueError(
                    f"Every row of `input_ids` must have {name}={special} as its {where} id; "
                    f"got {_preview(ids[:, position]) if ids.shape[1] else 'empty rows'}."
                )
            ids = ids[:, 1:] if position == 0 else ids[:, :-1]
        low, high = self.image_token_range
        outside = (ids < low) | (ids >= high)
        if bool(outside.any()):
            raise ValueError(
                f"`input_ids` hold ids outside the image-token range [{low}, {high}) "
                f"(offset={self.offset}, codebook_size={self.codebook_size}): {_preview(torch.unique(ids[outside]))}. "
                "Strip class/text tokens first, or restrict generation with `mapping.logits_processor()`."
            )
        grid = tuple(grid_shape) if grid_shape is not None else self.grid_shape
        codes = ids - self.offset
        if grid is None:
            return codes
        if ids.shape[1] != math.prod(grid):
            raise ValueError(
                f"`input_ids` hold {ids.shape[1]} codes per row (after bos/eos), but the grid {grid} needs "
                f"{math.prod(grid)}."
            )
        return codes.reshape(codes.shape[0], *grid)

    def logits_processor(self) -> CodeTokenLogitsProcessor:
        """A `LogitsProcessor` for `generate` that allows only code ids."""
        return CodeTokenLogitsProcessor(*self.image_token_range)

    def __eq__(self, other) -> bool:
        return isinstance(other, CodeTokenMapping) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in self.to_dict().items())
        return f"{type(self).__name__}({fields})"


def _preview(values: torch.Tensor, limit: int = 10) -> str:
    values = values.flatten().tolist()
    shown = ", ".join(map(str, values[:limit]))
    return f"[{shown}{', ...' if len(values) > limit else ''}] ({len(values)} value(s))"


class CodeTokenLogitsProcessor(LogitsProcessor):
    """Sets every logit outside `[first, end)` to -inf, so `generate` samples only code ids.

    Args:
        first (`int`): The first allowed id (the mapping's offset).
        end (`int`): One past the last allowed id.
    """

    def __init__(self, first: int, end: int):
        if not 0 <= first < end:
            raise ValueError(f"Need 0 <= first < end, got first={first}, end={end}.")
        self.first, self.end = int(first), int(end)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[-1] < self.end:
            raise ValueError(
                f"The model's vocabulary ({scores.shape[-1]} ids) is smaller than the code ids [{self.first}, "
                f"{self.end}); give the LM `vocab_size >= {self.end}`."
            )
        masked = torch.full_like(scores, -float("inf"))
        masked[:, self.first : self.end] = scores[:, self.first : self.end]
        return masked


# ---------------------------------------------------------------------------------------------------------
# Tokenising datasets


def _fingerprint(model, processor, mapping: CodeTokenMapping | None, dataset, column: str) -> str:
    """Identifies an encoding: the input data, the tokenizer's weights and config, the processor, the mapping."""
    digest = hashlib.sha256()
    digest.update(str(getattr(dataset, "_fingerprint", None)).encode())
    digest.update(column.encode())
    digest.update(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(processor.to_json_string().encode())
    digest.update(json.dumps(mapping.to_dict() if mapping else None, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def encode_dataset(
    model,
    processor,
    dataset,
    image_column: str | None = None,
    audio_column: str | None = None,
    batch_size: int = 256,
    mapping: CodeTokenMapping | None = None,
    output_dir: str | os.PathLike | None = None,
    push_to_hub: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    overwrite: bool = False,
    keep_in_memory: bool | None = None,
    desc: str = "Encoding",
):
    """Tokenise a `datasets.Dataset` with a VQ-VAE: a `codes` column (and `input_ids` with a `mapping`).

    The input column (images, or audio for an audio model) is dropped and every other column (e.g. `label`)
    kept. Images: `codes` `[h, w]` per row; audio: `[t]`, trimmed to the real (unpadded) frames. Runs
    `dataset.map(batched=True)` under `torch.no_grad()` with the model in eval mode (restored afterwards),
    on the model's device, with datasets' progress bar.

    Idempotent: the result's fingerprint hashes the input dataset's fingerprint, the weights, the configs
    and the mapping. Where the input has cache files, `datasets` reuses its cached result; an `output_dir`
    already holding this encoding is loaded instead of recomputed (`overwrite=True` recomputes).

    Args:
        model: a [`VQVAEModel`].
        processor: its [`VQVAEImageProcessor`] or [`VQVAEFeatureExtractor`].
        dataset: a `datasets.Dataset` (one split).
        image_column / audio_column: the input column; found by name (`image`, `img`... / `audio`...) if unset.
        batch_size: items per `map` batch (and per forward pass).
        mapping: if given, also write `input_ids` (flat, with bos/eos as the mapping says).
        output_dir: if given, `save_to_disk` here, atomically (written beside under a temporary name, then
            renamed), with `vq_tokenizer_encoding.json` recording the fingerprint.
        push_to_hub: if given, a dataset repo id to `push_to_hub` the result to (with `token`, `private`).
        overwrite: recompute even if `output_dir` already holds this encoding.
        keep_in_memory: passed to `map`. Default: True with an `output_dir` (that folder is the cache), else
            False (datasets' cache file beside the input's, when it has one).

    Returns:
        The encoded `datasets.Dataset`.
    """
    import datasets

    from .data import AUDIO_COLUMN_CANDIDATES, IMAGE_COLUMN_CANDIDATES, decode_audio_example, find_column

    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"`dataset` must be a datasets.Dataset (one split), got {type(dataset).__name__}; pass e.g. "
            "`dataset_dict['train']` (streaming datasets are not supported)."
        )
    config = model.config
    is_image = config.modality == "image"
    if is_image:
        column = find_column(dataset.column_names, IMAGE_COLUMN_CANDIDATES, "image", image_column)
    else:
        column = find_column(dataset.column_names, AUDIO_COLUMN_CANDIDATES, "audio", audio_column)
    if mapping is not None and mapping.codebook_size != config.codebook_size:
        raise ValueError(
            f"The mapping is for codebook_size={mapping.codebook_size} but the model has "
            f"{config.codebook_size} codes."
        )
    fingerprint = _fingerprint(model, processor, mapping, dataset, column)
    output_dir = Path(output_dir) if output_dir is not None else None
    if output_dir is not None and not overwrite and _encoding_fingerprint(output_dir) == fingerprint:
        logger.info("Reusing %s (same data, tokenizer and mapping).", output_dir)
        encoded = datasets.load_from_disk(str(output_dir))
        if push_to_hub:
            encoded.push_to_hub(push_to_hub, token=token, private=private)
        return encoded

    device = next(model.parameters()).device
    has_rate_column = "sampling_rate" in dataset.column_names

    def encode_batch(batch: dict) -> dict:
        if is_image:  # images of one batch must share a size (the processor batches them)
            pixel_values = processor(batch[column], return_tensors="pt").pixel_values.to(device)
            codes = model.encode(pixel_values=pixel_values).codes.cpu()
            result = {"codes": codes.numpy()}
            if mapping is not None:
                result["input_ids"] = mapping.codes_to_ids(codes).numpy()
            return result
        rates = batch["sampling_rate"] if has_rate_column else [None] * len(batch[column])
        arrays, item_rates = [], []
        for value, rate in zip(batch[column], rates, strict=True):
            array, rate = decode_audio_example(value, rate)
            arrays.append(array)
            item_rates.append(rate or processor.sampling_rate)
        if len(set(item_rates)) > 1:  # resample each to the model's rate, then batch
            arrays = [
                processor(array, sampling_rate=rate)["input_values"][0]
                for array, rate in zip(arrays, item_rates, strict=True)
            ]
            item_rates = [processor.sampling_rate] * len(arrays)
        inputs = processor(arrays, sampling_rate=item_rates[0], return_tensors="pt")
        codes = model.encode(input_values=inputs["input_values"].to(device)).codes.cpu()
        frames = inputs["padding_mask"][:, :: config.hop_length].sum(1).tolist()
        rows = [item[: int(count)] for item, count in zip(codes, frames, strict=True)]
        result = {"codes": [row.numpy() for row in rows]}
        if mapping is not None:
            result["input_ids"] = [mapping.codes_to_ids(row)[0].numpy() for row in rows]
        return result

    features = dataset.features.copy()
    del features[column]
    code = datasets.Value("int64")
    features["codes"] = datasets.List(datasets.List(code)) if is_image else datasets.List(code)
    if mapping is not None:
        features["input_ids"] = datasets.List(code)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            encoded = dataset.map(
                encode_batch,
                batched=True,
                batch_size=batch_size,
                remove_columns=[column],
                features=features,
                keep_in_memory=output_dir is not None if keep_in_memory is None else keep_in_memory,
                new_fingerprint=fingerprint,
                desc=desc,
            )
    finally:
        model.train(was_training)

    if output_dir is not None:
        _save_atomically(encoded, output_dir, fingerprint, model, mapping, column)
        encoded = datasets.load_from_disk(str(output_dir))
    if push_to_hub:
        encoded.push_to_hub(push_to_hub, token=token, private=private)
    return encoded


def _encoding_fingerprint(output_dir: Path) -> str | None:
    info = output_dir / ENCODING_INFO_NAME
    if not info.is_file() or not (output_dir / "dataset_info.json").is_file():
        return None
    try:
        return json.loads(info.read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def _save_atomically(encoded, output_dir: Path, fingerprint: str, model, mapping, column: str) -> None:
    """`save_to_disk` under a temporary name beside `output_dir`, then swap it into place."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    encoded.save_to_disk(str(partial))
    info = {
        "fingerprint": fingerprint,
        "tokenizer": getattr(model.config, "_name_or_path", None) or None,
        "input_column": column,
        "token_mapping": mapping.to_dict() if mapping else None,
    }
    (partial / ENCODING_INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    if mapping is not None:
        mapping.save_pretrained(partial)
    old = None
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(output_dir, old)
    os.replace(partial, output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# Command line: `vq-tokenizer encode-dataset` (registered in `vq_tokenizer.cli.COMMANDS`)


def add_encode_dataset_command(subparsers) -> None:
    """Add `encode-dataset` to the `vq-tokenizer` subcommands."""
    from .cli import add_model_arguments

    parser = subparsers.add_parser(
        "encode-dataset",
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
    parser.add_argument("--dataset_config", default=None, help="the dataset's configuration name, if any")
    parser.add_argument("--split", default="train")
    parser.add_argument("-o", "--output_dir", default=None, help="folder to save_to_disk into")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="dataset repo to push to")
    parser.add_argument("--private", action="store_true", help="create the Hub dataset repo private")
    parser.add_argument("--token", default=None, help="Hub token (default: the cached login or HF_TOKEN)")
    parser.add_argument("--column", default=None, help="image/audio column (default: found by name)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--max_samples", type=int, default=None, help="only the first N rows")
    parser.add_argument("--offset", type=int, default=None, help="also write input_ids = offset + code")
    parser.add_argument("--bos_token_id", type=int, default=None, help="begin-of-image id for input_ids")
    parser.add_argument("--eos_token_id", type=int, default=None, help="end-of-image id for input_ids")
    parser.add_argument("--overwrite", action="store_true", help="recompute even if the output is current")
    parser.set_defaults(handler=run_encode_dataset)


def run_encode_dataset(args: argparse.Namespace) -> None:
    from .cli import CLIError, load_tokenizer
    from .data import (
        AUDIO_COLUMN_CANDIDATES,
        IMAGE_COLUMN_CANDIDATES,
        find_column,
        load_audio_dataset,
        load_image_dataset,
    )

    if args.output_dir is None and args.push_to_hub is None:
        raise CLIError("pass -o/--output_dir, --push_to_hub REPO_ID, or both")
    tokenizer = load_tokenizer(args.model, args.revision, args.device)
    model, processor = tokenizer.model, tokenizer.processor
    is_image = tokenizer.modality == "image"
    load = load_image_dataset if is_image else load_audio_dataset
    dataset = load(args.dataset, args.split, args.dataset_config)
    if args.max_samples:
        dataset = dataset.select(range(min(len(dataset), args.max_samples)))
    candidates = IMAGE_COLUMN_CANDIDATES if is_image else AUDIO_COLUMN_CANDIDATES
    column = find_column(dataset.column_names, candidates, tokenizer.modality, args.column)
    mapping = None
    if args.offset is not None or args.bos_token_id is not None or args.eos_token_id is not None:
        grid = None  # audio lengths vary: ids_to_codes then gives flat codes
        if is_image:  # the grid of the first image, measured after the processor's padding
            pixels = processor([dataset[0][column]], return_tensors="pt").pixel_values
            grid = tuple(size // model.config.downsampling_factor for size in pixels.shape[2:])
        mapping = CodeTokenMapping(
            model.config.codebook_size,
            grid_shape=grid,
            offset=args.offset or 0,
            bos_token_id=args.bos_token_id,
            eos_token_id=args.eos_token_id,
        )
    encoded = encode_dataset(
        model,
        processor,
        dataset,
        batch_size=args.batch_size,
        mapping=mapping,
        output_dir=args.output_dir,
        push_to_hub=args.push_to_hub,
        token=args.token,
        private=args.private or None,
        overwrite=args.overwrite,
        desc=f"Encoding {args.dataset}[{args.split}]",
        **({"image_column": column} if is_image else {"audio_column": column}),
    )
    places = [str(Path(args.output_dir).resolve())] if args.output_dir else []
    places += [f"hub dataset {args.push_to_hub}"] if args.push_to_hub else []
    print(f"{len(encoded)} rows, columns {encoded.column_names} -> {' and '.join(places)}")


__all__ = [
    "CodeTokenMapping",
    "CodeTokenLogitsProcessor",
    "encode_dataset",
    "add_encode_dataset_command",
    "TOKEN_MAPPING_NAME",
]
