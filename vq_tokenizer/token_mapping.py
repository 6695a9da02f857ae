"""Codes for downstream transformers: codes <-> `input_ids`, and a logits processor that samples code ids only.

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

Residual quantizers (`quantizer_type="rvq"`) give Q codes per position, `[B, Q, h, w]`: each level gets its own
id range (level `l`'s code `c` is `offset + l * K + c`), and the sequence runs position by position, the Q levels
of a position one after another, coarse to fine (`'b q h w -> b (h w q)'`), so an LM predicts a position's
levels in the order they refine it. `ids_to_codes` inverts it, checking that each id is in its level's range.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessor

__all__ = ["TOKEN_MAPPING_NAME", "CodeTokenLogitsProcessor", "CodeTokenMapping"]

TOKEN_MAPPING_NAME = "token_mapping.json"


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
    batches and check their input. With `num_levels = Q > 1` (residual codes `[B, Q, h, w]` / `[B, Q, t]`), level
    `l`'s code `c` becomes `offset + l * K + c` and the levels of each position follow one another
    (`'b q h w -> b (h w q)'`): position-major, level-minor, invertible.

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
        num_levels (`int`, *optional*, defaults to 1):
            Codes per position: Q for a residual quantizer (codes `[B, Q, *grid]`), else 1. The image ids are
            then `[offset, offset + Q * K)`.

    Example:

    ```python
    >>> import torch
    >>> from vq_tokenizer import CodeTokenMapping

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
        num_levels: int = 1,
    ):
        if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)) or num_levels < 1:
            raise ValueError(f"`num_levels` must be a positive int, got {num_levels!r}.")
        self.num_levels = int(num_levels)
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
        kwargs.setdefault("num_levels", getattr(config, "codes_per_position", 1))
        return cls(config.codebook_size, grid_shape=grid_shape, **kwargs)

    def to_dict(self) -> dict:
        return {
            "codebook_size": self.codebook_size,
            "grid_shape": list(self.grid_shape) if self.grid_shape is not None else None,
            "offset": self.offset,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        } | (
            {"num_levels": self.num_levels} if self.num_levels > 1 else {}
        )  # files of one level stay as they were

    @classmethod
    def from_dict(cls, values: dict) -> CodeTokenMapping:
        known = {"codebook_size", "grid_shape", "offset", "bos_token_id", "eos_token_id", "num_levels"}
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
        """`(first, end)`: the ids of codes (of every level) are `first <= id < end` (end exclusive)."""
        return self.offset, self.offset + self.num_levels * self.codebook_size

    def level_token_range(self, level: int) -> tuple[int, int]:
        """`(first, end)`: the ids of level `level`'s codes."""
        if not 0 <= level < self.num_levels:
            raise ValueError(f"`level` must be in [0, {self.num_levels}), got {level}.")
        first = self.offset + level * self.codebook_size
        return first, first + self.codebook_size

    @property
    def code_token_ids(self) -> list[int]:
        """Every id that stands for a code, in code order."""
        return list(range(*self.image_token_range))

    @property
    def num_codes_per_item(self) -> int | None:
        """h * w (or t) times the levels: codes in one item, when the grid is fixed."""
        return math.prod(self.grid_shape) * self.num_levels if self.grid_shape is not None else None

    @property
    def sequence_length(self) -> int | None:
        """Ids per item: the codes plus bos/eos when set."""
        n = self.num_codes_per_item
        return None if n is None else n + (self.bos_token_id is not None) + (self.eos_token_id is not None)

    @property
    def min_vocab_size(self) -> int:
        """The smallest LM vocabulary that holds every id this mapping emits."""
        ids = [self.image_token_range[1], (self.bos_token_id or 0) + 1, (self.eos_token_id or 0) + 1]
        return max(ids)

    # -- conversions ----------------------------------------------------------------------------------------
    def codes_to_ids(self, codes: torch.Tensor | np.ndarray | Sequence) -> torch.LongTensor:
        """Codes `[B, h, w]` or `[B, t]` (`[B, Q, h, w]` / `[B, Q, t]` with levels; or one item without the
        batch axis) -> `input_ids` `[B, L]`.

        `L = h * w * Q (+1 with bos) (+1 with eos)`. Codes must lie in `[0, K)`; with a fixed `grid_shape` the
        items must have that shape.
        """
        codes = torch.as_tensor(codes)
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"`codes` must be integers, got {codes.dtype}.")
        levels = self.num_levels
        level_axis = (levels,) if levels > 1 else ()
        if self.grid_shape is not None:
            item_shape = level_axis + self.grid_shape
            if codes.dim() == len(item_shape):
                codes = codes[None]
            if tuple(codes.shape[1:]) != item_shape:
                raise ValueError(
                    f"`codes` must have shape [B, {', '.join(map(str, item_shape))}] for this mapping "
                    f"(grid_shape={self.grid_shape}, num_levels={levels}), got {tuple(codes.shape)}."
                )
        elif levels > 1:
            if codes.dim() in (2, 3) and codes.shape[0] == levels:
                codes = codes[None]
            if codes.dim() not in (3, 4) or codes.shape[1] != levels:
                raise ValueError(
                    f"`codes` must have shape [B, {levels}, h, w] or [B, {levels}, t] (num_levels={levels}), "
                    f"got {tuple(codes.shape)}."
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
        if levels > 1:  # level l's codes get their own range; each position's levels in a row
            shift = torch.arange(levels, device=codes.device) * self.codebook_size
            codes = codes.long() + shift.reshape(1, levels, *([1] * (codes.dim() - 2)))
            codes = codes.flatten(2).transpose(1, 2)
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
        """`input_ids` `[B, L]` (or `[L]`) -> codes `[B, *grid_shape]` (`[B, t]` without a grid shape); with
        levels `[B, Q, *grid_shape]` (`[B, Q, t]`), each id checked against its level's range.

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
        levels = self.num_levels
        if levels > 1:
            if ids.shape[1] % levels:
                raise ValueError(
                    f"`input_ids` hold {ids.shape[1]} codes per row (after bos/eos), not a multiple of the "
                    f"{levels} levels."
                )
            codes = codes.reshape(codes.shape[0], -1, levels).transpose(1, 2)  # [B, Q, positions]
            level_of_id = torch.div(codes, self.codebook_size, rounding_mode="floor")
            expected = torch.arange(levels, device=codes.device).reshape(1, levels, 1)
            if bool((level_of_id != expected).any()):
                raise ValueError(
                    f"`input_ids` hold ids of the wrong level: position p's ids must run through the levels in "
                    f"order, level l's in [{self.offset} + l * {self.codebook_size}, {self.offset} + (l + 1) * "
                    f"{self.codebook_size}); restrict generation with `mapping.logits_processor(prompt_length)`."
                )
            codes = codes - expected * self.codebook_size
        if grid is None:
            return codes
        if codes.shape[-1] != math.prod(grid):
            raise ValueError(
                f"`input_ids` hold {ids.shape[1]} codes per row (after bos/eos), but the grid {grid} needs "
                f"{math.prod(grid) * levels}."
            )
        return codes.reshape(*codes.shape[:-1], *grid)

    def logits_processor(self, prompt_length: int | None = None) -> CodeTokenLogitsProcessor:
        """A `LogitsProcessor` for `generate` that allows only code ids. With levels and `prompt_length` (the ids
        before the first code, bos included), only the ids of the level the next position is at."""
        first, end = self.image_token_range
        if self.num_levels > 1 and prompt_length is not None:
            return CodeTokenLogitsProcessor(
                first,
                end,
                level_size=self.codebook_size,
                num_levels=self.num_levels,
                prompt_length=prompt_length,
            )
        return CodeTokenLogitsProcessor(first, end)

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
        level_size (`int`, *optional*): With levels: K, the ids of one level.
        num_levels (`int`, *optional*, defaults to 1): Q; with `prompt_length`, the code at generated position
            `i` may only be of level `i % Q` (ids `[first + l K, first + (l + 1) K)`).
        prompt_length (`int`, *optional*): The ids before the first code.
    """

    def __init__(
        self,
        first: int,
        end: int,
        level_size: int | None = None,
        num_levels: int = 1,
        prompt_length: int | None = None,
    ):
        if not 0 <= first < end:
            raise ValueError(f"Need 0 <= first < end, got first={first}, end={end}.")
        self.first, self.end = int(first), int(end)
        self.level_size, self.num_levels, self.prompt_length = level_size, int(num_levels), prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[-1] < self.end:
            raise ValueError(
                f"The model's vocabulary ({scores.shape[-1]} ids) is smaller than the code ids [{self.first}, "
                f"{self.end}); give the LM `vocab_size >= {self.end}`."
            )
        first, end = self.first, self.end
        if self.num_levels > 1 and self.prompt_length is not None:
            level = (input_ids.shape[1] - self.prompt_length) % self.num_levels
            first = self.first + level * self.level_size
            end = first + self.level_size
        masked = torch.full_like(scores, -float("inf"))
        masked[:, first:end] = scores[:, first:end]
        return masked
