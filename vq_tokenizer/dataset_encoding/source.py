"""The rows to encode: batches planned in source order over a `datasets.Dataset` or a streaming
`IterableDataset`, loaded (decoded, then batched by the modality) in DataLoader workers while the model runs.

The plan runs in the DataLoader's sampler, in the process that owns the model: over a map-style dataset it
names row ranges (a worker reads them), over a stream it reads the rows undecoded (cheap) and hands each batch's
raw rows to a worker. Workers decode each item on its own, so an item that fails is reported by its index
instead of failing its batch; items that load alone but not together (images of different sizes) are batched
by shape. Media columns are read undecoded and decoded here, with their own `datasets` feature.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = ["BatchPlan", "LoadedBatch", "RowSource", "StreamEnd", "make_loader"]

logger = logging.getLogger(__name__)

# The column `Modality.collate_examples` reads each item's sampling rate from, when a dataset has it.
SAMPLING_RATE_COLUMN = "sampling_rate"
# `datasets` features of each modality's media, to refuse a column of another modality by name.
_MEDIA_FEATURES = {"image": "Image", "audio": "Audio", "video": "Video"}


@dataclass
class BatchPlan:
    """Source rows `[start, stop)` of part `part`; `rows` holds them (undecoded) when the source is a stream."""

    part: int
    start: int
    stop: int
    last: bool  # the last batch of its part
    rows: list[dict] | None = None


@dataclass
class StreamEnd:
    """A stream was read to its end: it has `num_rows` rows."""

    num_rows: int


@dataclass
class LoadedBatch:
    """A planned batch, loaded: model inputs in groups (one forward pass each), the kept columns of the rows
    that loaded, and the rows that did not."""

    part: int
    start: int
    stop: int
    last: bool
    groups: list[tuple[list[int], dict[str, torch.Tensor]]]  # (row indices, model inputs)
    positions: list[int]  # the rows that loaded, in order
    kept: object  # pyarrow.Table of `positions`' kept columns
    errors: list[tuple[int, str]]  # (row index, reason)


def describe_error(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [""])[0][:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class RowSource:
    """A dataset split prepared for encoding: the media column, the columns to keep, and how to decode.

    Args:
        dataset: a `datasets.Dataset` or `datasets.IterableDataset`.
        modality: the tokenizer's `Modality`.
        processor: its image processor or feature extractor.
        column: the media column (found by name when None).
        keep_columns: the columns copied to the output (default: every column but the media column).
    """

    def __init__(self, dataset, modality, processor, column: str | None, keep_columns: Sequence[str] | None):
        import datasets

        self.streaming = isinstance(dataset, datasets.IterableDataset)
        if not self.streaming and not isinstance(dataset, datasets.Dataset):
            raise ValueError(
                f"`dataset` must be a datasets.Dataset or IterableDataset (one split), got {type(dataset).__name__}"
                "; pass e.g. `dataset_dict['train']`."
            )
        self.modality = modality
        self.processor = processor
        names = dataset.column_names
        if names is None:  # a stream whose features are unknown (e.g. after `map`): read the first row's
            names = list(next(iter(dataset)))
        self.column = modality.find_column(names, column)
        features = dataset.features or {}
        _check_modality(self.column, features.get(self.column), modality)
        if keep_columns is None:
            keep_columns = [name for name in names if name != self.column]
        missing = [name for name in keep_columns if name not in names]
        if missing or self.column in keep_columns:
            raise ValueError(
                f"Cannot keep columns {missing or [self.column]}: keep any of {[n for n in names if n != self.column]}."
            )
        self.keep = list(keep_columns)
        self.rate_column = SAMPLING_RATE_COLUMN if SAMPLING_RATE_COLUMN in names else None
        self.kept_features = (
            datasets.Features({name: features[name] for name in self.keep}) if dataset.features else None
        )
        self.num_rows = None if self.streaming else len(dataset)

        media_columns = [self.column] + (
            [self.rate_column] if self.rate_column not in (None, self.column) else []
        )
        if self.streaming:
            prepared = modality.prepare_dataset(dataset, self.column)
            self._stream = _undecoded(prepared)
            self._decode = _decoder(prepared.features, self.column)
        else:
            media = modality.prepare_dataset(dataset.select_columns(media_columns), self.column)
            self._media = _undecoded(media)
            self._decode = _decoder(media.features, self.column)
            self._kept = dataset.select_columns(self.keep).with_format("arrow")

    # -- the plan (runs in the process that owns the model) -----------------------------------------------
    def plan(
        self,
        wanted: Callable[[int], bool],
        shard_size: int,
        batch_size: int,
        num_rows: int | None,
        last_part: int | None = None,
    ) -> Iterator[BatchPlan | StreamEnd]:
        """Batches of the parts `wanted` accepts, in source order; batches never cross a part boundary.

        `num_rows`: the source's length when known (then no part past it is planned, and a stream is read only
        as far as `last_part`); otherwise a stream is read to its end and a `StreamEnd` closes the plan.
        """
        if not self.streaming:
            for part in range(-(-self.num_rows // shard_size)):
                if wanted(part):
                    start, stop = part * shard_size, min(self.num_rows, (part + 1) * shard_size)
                    for first in range(start, stop, batch_size):
                        end = min(first + batch_size, stop)
                        yield BatchPlan(part, first, end, last=end == stop)
            return
        yield from self._plan_stream(wanted, shard_size, batch_size, num_rows, last_part)

    def _plan_stream(self, wanted, shard_size, batch_size, num_rows, last_part):
        held: BatchPlan | None = None  # the newest batch: whether it ends its part shows at the next row
        rows: list[dict] = []
        start = position = 0
        stop_at = (
            None if num_rows is None or last_part is None else min(num_rows, (last_part + 1) * shard_size)
        )
        ended = True
        for row in self._stream:
            if stop_at is not None and position >= stop_at:
                ended = False
                break
            part = position // shard_size
            position += 1
            if not wanted(part):
                continue
            if not rows:
                start = position - 1
            rows.append(row)
            if len(rows) == batch_size or position % shard_size == 0:
                if held is not None:
                    yield held
                held = BatchPlan(part, start, position, last=position % shard_size == 0, rows=rows)
                rows = []
        if rows:
            if held is not None:
                yield held
            held = BatchPlan((position - 1) // shard_size, start, position, last=False, rows=rows)
        if held is not None:
            held.last = held.last or held.stop == position  # the source ends here, and so does its last part
            yield held
        if ended:
            yield StreamEnd(position)

    # -- loading (runs in a DataLoader worker) -----------------------------------------------------------
    def load(self, plan: BatchPlan) -> LoadedBatch:
        if plan.rows is None:
            media = self._media[plan.start : plan.stop]
            cells = media[self.column]
            rates = media[self.rate_column] if self.rate_column else None
            kept = self._kept[plan.start : plan.stop]
        else:
            cells = [row[self.column] for row in plan.rows]
            rates = [row[self.rate_column] for row in plan.rows] if self.rate_column else None
            kept = self._kept_table(plan.rows)
        indices = range(plan.start, plan.stop)
        values, value_rates, loaded, errors = [], [], [], []
        for offset, (index, cell) in enumerate(zip(indices, cells, strict=True)):
            try:
                values.append(self._decode(cell))
            except Exception as error:  # noqa: BLE001 - any item that does not decode is reported by index
                errors.append((index, describe_error(error)))
                continue
            value_rates.append(None if rates is None else rates[offset])
            loaded.append(index)
        groups, failed = self._model_inputs(loaded, values, value_rates if rates is not None else None)
        errors = sorted(errors + failed)
        bad = {index for index, _ in errors}
        positions = [index for index in indices if index not in bad]
        if bad:
            kept = kept.take([index - plan.start for index in positions])
        return LoadedBatch(plan.part, plan.start, plan.stop, plan.last, groups, positions, kept, errors)

    def _model_inputs(self, indices: list[int], values: list, rates: list | None):
        """One group for the whole batch; when that fails, each item alone, then one group per input shape."""
        if not values:
            return [], []
        try:
            return [(indices, self.modality.batch(self.processor, values, rates))], []
        except Exception:  # noqa: BLE001 - find the items at fault below
            pass
        singles, errors = [], []
        for position, (index, value) in enumerate(zip(indices, values, strict=True)):
            try:
                inputs = self.modality.batch(
                    self.processor, [value], None if rates is None else [rates[position]]
                )
            except Exception as error:  # noqa: BLE001 - reported by index
                errors.append((index, describe_error(error)))
                continue
            singles.append((index, inputs))
        by_shape: dict[tuple, list] = {}
        for index, inputs in singles:
            key = tuple((name, tuple(tensor.shape[1:])) for name, tensor in sorted(inputs.items()))
            by_shape.setdefault(key, []).append((index, inputs))
        groups = [
            (
                [index for index, _ in items],
                {name: torch.cat([inputs[name] for _, inputs in items]) for name in items[0][1]},
            )
            for items in by_shape.values()
        ]
        return groups, errors

    def _kept_table(self, rows: list[dict]):
        import pyarrow as pa

        columns = {name: [row[name] for row in rows] for name in self.keep}
        if self.kept_features is None:
            return pa.Table.from_pydict(columns)
        return pa.Table.from_pydict(
            self.kept_features.encode_batch(columns), schema=self.kept_features.arrow_schema
        )


def _check_modality(column: str, feature, modality) -> None:
    """Refuse a column that plainly holds something else: another modality's media, or scalar values."""
    import datasets

    kind = type(feature).__name__
    others = {name: feature_name for name, feature_name in _MEDIA_FEATURES.items() if name != modality.name}
    for other, feature_name in others.items():
        if kind == feature_name:
            raise ValueError(
                f"Column {column!r} holds {other} ({kind} feature) but the tokenizer is an {modality.name} model; "
                f"name the {modality.name} column (--column) or use an {other} tokenizer."
            )
    if isinstance(feature, (datasets.Value, datasets.ClassLabel)):
        raise ValueError(
            f"Column {column!r} holds {feature.dtype if isinstance(feature, datasets.Value) else 'class label'} "
            f"values, not {modality.name}s; name the {modality.name} column (--column)."
        )


def _undecoded(dataset):
    """The dataset with its media features (Image, Audio, ...) left undecoded."""
    for name, feature in (dataset.features or {}).items():
        if getattr(feature, "decode", False) and hasattr(feature, "decode_example"):
            dataset = dataset.cast_column(name, dataclasses.replace(feature, decode=False))
    return dataset


def _decoder(features, column: str) -> Callable:
    """How to decode one cell of `column`: its feature's `decode_example` when `datasets` would decode it."""
    feature = (features or {}).get(column)
    if getattr(feature, "decode", False) and hasattr(feature, "decode_example"):
        return feature.decode_example
    return _unchanged


def _unchanged(value):
    return value


# -- the DataLoader --------------------------------------------------------------------------------------------
class _Loading(torch.utils.data.Dataset):
    """Loads what the plan names (a DataLoader "index" here is a `BatchPlan`)."""

    def __init__(self, source: RowSource):
        self.source = source

    def __getitem__(self, plan):
        return plan if isinstance(plan, StreamEnd) else self.source.load(plan)


class _Plan(torch.utils.data.Sampler):
    def __init__(self, plan: Callable[[], Iterable]):
        self._plan = plan

    def __iter__(self):
        return iter(self._plan())


def _unbatched(item):
    return item


def make_loader(source: RowSource, plan: Callable[[], Iterable], num_workers: int, pin_memory: bool = False):
    """A DataLoader that yields `LoadedBatch`es (and `StreamEnd`) in plan order, loaded by `num_workers`."""
    return torch.utils.data.DataLoader(
        _Loading(source),
        sampler=_Plan(plan),
        batch_size=None,
        collate_fn=_unbatched,
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
        pin_memory=pin_memory,
    )
