"""The `Modality` interface: everything that differs between images and audio, asked of one object.

A modality knows its model input (`pixel_values` / `input_values`), how to find its column in a dataset and
prepare it, how to turn dataset cells or files into a batch of model inputs (resampling, padding), which
codes of a batch are real (not padding), how to read and write its files, what to measure in an evaluation
and which picture to draw, and what its model card says. The rest of the package asks
`modality_for(config)` instead of testing `config.modality`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

logger = logging.getLogger(__name__)

__all__ = ["Measurement", "Modality", "find_column", "level_counts"]

Note = Callable[[str], None]


def find_column(
    column_names: Sequence[str], candidates: Sequence[str], kind: str, given: str | None = None
) -> str:
    """The column to read: `given` if set (and present), else the first of `candidates` the data has."""
    column_names = list(column_names)
    if given is not None:
        if given not in column_names:
            raise ValueError(f"Column {given!r} is not in the dataset; its columns are {column_names}.")
        return given
    for name in candidates:
        if name in column_names:
            return name
    raise ValueError(
        f"No {kind} column found among {column_names}; pass the column name (e.g. `--{kind}_column`)."
    )


@dataclass
class Measurement:
    """What `Modality.measure` finds in one batch.

    Attributes:
        values: per-item figures, each a float64 tensor `[B]` (e.g. `psnr`, `ssim`; `si_snr`).
        codes: `[B, N]` codes, flattened per item, with -1 where an item is padding; a residual quantizer's
            level `l` codes are offset by `l * K` (the ids of `level_ids`), so they count apart.
        example: what the picture is drawn from (originals and reconstructions), or None if not asked for.
        level_values: with `num_quantizers`, the per-item figures of the reconstruction decoded from the first
            `n` levels, for each `n` asked (`{n: {name: [B]}}`; the full count shares `values`).
        items: with `keep_items`, each item's original and its reconstruction from each level count asked, without
            padding (`[(original, {n: reconstruction})]`, on the CPU), for examples; None if not asked for or
            the modality keeps none.
    """

    values: dict[str, torch.Tensor]
    codes: torch.Tensor
    example: Any = None
    level_values: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    items: list | None = None


def level_ids(codes: torch.Tensor, config) -> torch.Tensor:
    """Codes with each level in its own range: `[B, Q, *grid]` codes of a residual quantizer -> level `l`'s code
    `c` as `l * K + c` (values in `[0, Q * K)`); single-level codes as they are."""
    levels = getattr(config, "codes_per_position", 1)
    if levels == 1:
        return codes
    shift = torch.arange(levels, device=codes.device) * config.codebook_size
    return codes + shift.reshape(1, levels, *([1] * (codes.dim() - 2)))


def level_counts(config, num_quantizers: Sequence[int] | None = None) -> list[int]:
    """The numbers of levels to evaluate, ascending: `num_quantizers` checked against the model, or by default
    Q/4, Q/2 and Q for a residual quantizer with Q levels (e.g. 3, 6, 12), and 1 (the model) for the others."""
    levels = getattr(config, "codes_per_position", 1)
    if num_quantizers is None:
        return sorted({max(1, levels // 4), max(1, levels // 2), levels})
    counts = sorted({int(n) for n in num_quantizers})
    if not counts or counts[0] < 1 or counts[-1] > levels:
        raise ValueError(
            f"num_quantizers must be level counts in [1, {levels}] (the model's quantizer has {levels} "
            f"level{'s' if levels > 1 else ''}), got {list(num_quantizers)}."
        )
    return counts


class Modality(ABC):
    """One kind of data (image, audio): the attributes and methods the package asks instead of branching."""

    name: ClassVar[str]
    # The model's main input, and every input `measure` passes to the model's forward.
    input_name: ClassVar[str]
    model_input_names: ClassVar[tuple[str, ...]]
    # Dataset columns tried, in order, when none is named; the `datasets` builder for a plain folder.
    column_candidates: ClassVar[tuple[str, ...]]
    folder_builder: ClassVar[str]
    # Files: the suffixes read and written, and the one written when none is asked for.
    file_suffixes: ClassVar[tuple[str, ...]]
    default_suffix: ClassVar[str]
    # Codes of one item: `[h, w]` or `[t]`.
    code_layout: ClassVar[str]
    # The evaluation picture (`<stem>.png`) and its model-card caption; the Hub pipeline tag.
    picture_stem: ClassVar[str]
    picture_caption: ClassVar[str]
    hub_task: ClassVar[str]
    # Groups an evaluation reports apart (`group_of` names one per dataset row; "all" is every item), and the
    # key of the per-level x group table `evaluation.evaluate` returns (None: no table, the full model only).
    eval_groups: ClassVar[tuple[str, ...]] = ("all",)
    table_key: ClassVar[str | None] = None
    # Per-item figures that may be NaN where undefined (left out of means, their count reported).
    optional_figures: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @property
    def code_dims(self) -> int:
        """Axes of one item's codes: 2 (`[h, w]`) or 1 (`[t]`)."""
        return self.code_layout.count(",") + 1

    @property
    def picture_name(self) -> str:
        return f"{self.picture_stem}.png"

    # -- processors ---------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def processor_class(self) -> type:
        """`VQVAEImageProcessor` or `VQVAEFeatureExtractor`."""

    @abstractmethod
    def processor_for(self, config, **kwargs):
        """A new processor that fits `config` (channels, padding multiple, rate); `kwargs` go to its constructor."""

    # -- datasets -----------------------------------------------------------------------------------------
    def find_column(self, column_names: Sequence[str], given: str | None = None) -> str:
        """The input column of a dataset: `given`, or the first of `column_candidates` it has."""
        return find_column(column_names, self.column_candidates, self.name, given)

    def prepare_dataset(self, dataset, column: str):
        """The dataset, with `column` made cheap to read (nothing to do for most modalities)."""
        return dataset

    @abstractmethod
    def batch(
        self, processor, values: Sequence, sampling_rates: Sequence[int | None] | None = None
    ) -> dict[str, torch.Tensor]:
        """Model inputs (`model_input_names`, torch tensors) for a batch of dataset cells or read files."""

    def collate_examples(
        self, processor, examples: Sequence[dict], column: str, with_groups: bool = False
    ) -> dict[str, torch.Tensor]:
        """`batch` for rows of a dataset (a DataLoader's `collate_fn`, with `functools.partial`).

        With `with_groups` (evaluation loaders), the batch also carries `eval_group`: int64 `[B]`, each row's
        index in `eval_groups` (see `group_of`), which `evaluation.evaluate` reports apart.
        """
        values = [example[column] for example in examples]
        rates = [example.get("sampling_rate") for example in examples]
        batch = self.batch(processor, values, rates)
        if with_groups:
            groups = [self.eval_groups.index(self.group_of(example)) for example in examples]
            batch["eval_group"] = torch.tensor(groups, dtype=torch.long)
        return batch

    def group_of(self, example: dict) -> str:
        """The evaluation group of a dataset row (one of `eval_groups`; "all" when the row does not say)."""
        return "all"

    def code_mask(self, inputs: dict[str, torch.Tensor], config) -> torch.Tensor | None:
        """Bool `[B, *code grid]`: which codes of a batch stand for real input (None: all of them)."""
        return None

    def real_codes(self, codes: torch.Tensor, inputs: dict[str, torch.Tensor], config) -> list[torch.Tensor]:
        """The codes of each item (`[*grid]`, or `[Q, *grid]` with levels), without those of padding."""
        mask = self.code_mask(inputs, config)
        if mask is None:
            return list(codes)
        return [row[..., : int(count)] for row, count in zip(codes, mask.flatten(1).sum(1), strict=True)]

    def grid_of(self, processor, value, config) -> tuple[int, ...] | None:
        """The code grid of one dataset cell, if every item of the data shares it (None: it varies)."""
        return None

    def codes_feature(self):
        """The `datasets` feature of a `codes` column (int64, nested `code_dims` deep)."""
        import datasets

        feature = datasets.Value("int64")
        for _ in range(self.code_dims):
            feature = datasets.List(feature)
        return feature

    # -- files --------------------------------------------------------------------------------------------
    def accepts(self, path: str | Path) -> bool:
        """Whether `path` has one of this modality's file suffixes."""
        return Path(path).suffix.lower() in self.file_suffixes

    @abstractmethod
    def read_file(self, path: str | Path, config, note: Note | None = None):
        """One file, ready for the processor (converted for the model where needed); `note` is told what
        changed (default: logged). Raises FileNotFoundError or ValueError with a message for the user."""

    def file_batches(self, paths: Sequence[Path], batch_size: int) -> list[list[int]]:
        """Indices of `paths` in batches of at most `batch_size` that can share one tensor."""
        return [
            list(range(start, min(start + batch_size, len(paths))))
            for start in range(0, len(paths), batch_size)
        ]

    @abstractmethod
    def file_inputs(self, processor, item, config) -> tuple[dict[str, torch.Tensor], dict]:
        """Model inputs for one read file, and the sizes needed to undo the padding after decoding."""

    @abstractmethod
    def describe_encoding(self, info: dict, codes, config) -> str:
        """One line about an encoded file, e.g. `45x62 px -> 192 codes [16x12]`."""

    @abstractmethod
    def postprocess(self, processor, reconstruction: torch.Tensor, info: dict):
        """One decoded item (a PIL image, or a `[C, T]` float32 waveform), cropped to `info`'s size if given."""

    @abstractmethod
    def write_file(self, path: str | Path, item, config) -> str:
        """Write a decoded item; returns a short description (`45x62 px`, `1.20 s at 16000 Hz`)."""

    # -- evaluation ---------------------------------------------------------------------------------------
    def measure(
        self,
        model,
        inputs: dict[str, torch.Tensor],
        processor,
        keep_example: bool = False,
        num_quantizers: Sequence[int] | None = None,
        keep_items: bool = False,
    ) -> Measurement:
        """Run the model on a batch and measure it: per-item figures, the codes (-1 on padding), and,
        with `keep_example`, what the picture is drawn from.

        With `num_quantizers` (level counts, see `level_counts`), each count `n` is also measured on
        `model.decode(codes[:, :n])` (`Measurement.level_values`); with `keep_items`, each item's original and
        reconstructions are kept (`Measurement.items`, modalities that keep examples only).
        """
        output = model(**{name: inputs[name] for name in self.model_input_names})
        codes = level_ids(output.codes, model.config)
        mask = self.code_mask(inputs, model.config)
        if mask is not None:
            if codes.dim() > mask.dim():  # one mask for every level
                mask = mask.unsqueeze(1).expand_as(codes)
            codes = torch.where(mask, codes, torch.full_like(codes, -1))
        codes = codes.flatten(1)
        values, example = self._figures(inputs, output.reconstruction, processor, keep_example)
        level_values, reconstructions = {}, {}
        full = model.config.codes_per_position
        for count in num_quantizers or ():
            if count == full:
                level_values[count], reconstructions[count] = values, output.reconstruction
                continue
            # Only residual quantizers take fewer levels (`level_counts` checks the counts).
            reconstruction = model.decode(output.codes[:, :count]).reconstruction
            level_values[count] = self._figures(inputs, reconstruction, processor, False)[0]
            reconstructions[count] = reconstruction
        items = self._items(inputs, reconstructions) if keep_items else None
        return Measurement(
            values=values, codes=codes, example=example, level_values=level_values, items=items
        )

    @abstractmethod
    def _figures(
        self, inputs, reconstruction: torch.Tensor, processor, keep_example: bool
    ) -> tuple[dict[str, torch.Tensor], Any]:
        """`measure`'s per-item figures of `reconstruction` and, with `keep_example`, the picture's material."""

    def _items(self, inputs, reconstructions: dict[int, torch.Tensor]) -> list | None:
        """`Measurement.items`: each item's original and `{levels: reconstruction}` (None: none kept)."""
        return None

    def save_examples(
        self, items: Sequence, groups: Sequence[str], config, folder: str | Path
    ) -> Path | None:
        """Write decoded examples (`Measurement.items` entries, of `groups`) into `folder`, with an index the
        model card reads; returns the index (None: the modality writes none)."""
        return None

    def rate_figures(self, config, levels: int) -> dict:
        """The rate of the codes of the first `levels` levels, for a row of the evaluation table (e.g. `kbps`)."""
        return {}

    @abstractmethod
    def token_figures(self, config, example) -> dict:
        """How many tokens an item takes (`tokens_per_image` / `tokens_per_second`)."""

    @abstractmethod
    def save_picture(self, example, config, path: str | Path) -> Path:
        """Draw the evaluation picture (reconstruction grid, spectrogram) from a `Measurement.example`."""

    # -- model cards --------------------------------------------------------------------------------------
    @abstractmethod
    def card_details(self, config, metrics: dict, load_id: str, output_dir: str | Path | None = None) -> dict:
        """What the model card says that differs: `tokens_description`, `bits_description`,
        `input_description`, `token_description`, `usage_snippet`, and `extra_sections` (markdown after the
        evaluation, e.g. the per-bitrate table and examples, linking files under `output_dir`; may be empty)."""

    # -- helpers for subclasses ---------------------------------------------------------------------------
    @staticmethod
    def _note(note: Note | None, message: str) -> None:
        (note or logger.info)(message)

    @staticmethod
    def _check_exists(path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
