"""Tokenise a dataset split with a VQ-VAE, on one process or many: parquet shards out, resumable.

    # one process, or `accelerate launch [--num_processes N] -m vq_tokenizer encode-dataset ...` for many
    summary = write_encoded_dataset(model, processor, dataset, "out/codes", split="train", accelerator=state)
    codes = encode_dataset(model, processor, dataset, output_dir="out/codes")   # the same, loaded back

The rows are cut into parts of `shard_size` rows, fixed by the source alone; each process encodes its own
contiguous share of the parts that are not done yet (a stream, whose length is unknown, is shared part by part:
each process reads it undecoded and decodes only its parts). Decoding runs in DataLoader workers while the model
runs; the network may run under autocast (`dtype`), the nearest-code search stays fp32. Each part is written
under a temporary name and renamed when whole, so a run killed at any moment is finished by running it again:
finished parts are kept. The main process then renames the parts to `data/<split>-XXXXX-of-NNNNN.parquet` and
writes a dataset card that `datasets.load_dataset(output_dir)` reads as is (see `output.py` for the folder).
Processes never wait on each other in a collective once the work starts (only the plan is broadcast), so an
uneven share cannot hit a collective timeout; the main process follows the others through the files they write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..modalities import modality_for
from ..token_mapping import CodeTokenMapping
from .card import EncodingInfo, push_folder, read_encoding_info, write_card
from .output import DEFAULT_SHARD_SIZE, MANIFEST_NAME, OutputFolder, Part, SplitPlan
from .source import LoadedBatch, RowSource, StreamEnd, describe_error, make_loader

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "DTYPES",
    "ON_ERROR",
    "ENCODING_INFO_NAME",
    "INDEX_COLUMN",
    "EncodingInfo",
    "EncodingSummary",
    "encode_dataset",
    "read_encoding_info",
    "tokenizer_fingerprint",
    "write_encoded_dataset",
]

logger = logging.getLogger(__name__)

ENCODING_INFO_NAME = MANIFEST_NAME
INDEX_COLUMN = "index"  # the row's index in the source split
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ON_ERROR = ("raise", "skip")
# Items per forward pass on CPU (measured on Fashion-MNIST and the speech corpus: benchmarks/encode_dataset.py).
DEFAULT_BATCH_SIZES = {"image": 64, "audio": 4}
# Seconds between progress-file writes (each process) and reads (main process), and between checks for the others.
PROGRESS_EVERY_S = 0.5
POLL_EVERY_S = 0.1


@dataclass
class EncodingSummary:
    """What an encoding run did (the same on every process).

    Attributes:
        split: the split written.
        num_rows: rows in the output (the source's rows less the skipped ones).
        num_tokens: codes in the output.
        num_shards: parquet shards under `data/`.
        encoded_rows: rows this run read (all processes; the rest came from an earlier run's parts).
        seconds: this run's wall-clock time from the first batch to the finished output.
        skipped: `[row index, reason]` of every row left out (`on_error="skip"`).
        output_dir: the folder, or None when nothing was kept on disk.
        repo_id: the Hub dataset repo pushed to, if any.
    """

    split: str
    num_rows: int
    num_tokens: int
    num_shards: int
    encoded_rows: int
    seconds: float
    skipped: list = field(default_factory=list)
    output_dir: Path | None = None
    repo_id: str | None = None

    @property
    def items_per_second(self) -> float:
        return self.encoded_rows / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        place = [str(self.output_dir)] if self.output_dir else []
        place += [f"hub dataset {self.repo_id}"] if self.repo_id else []
        text = (
            f"{self.split}: {self.num_rows} rows, {self.num_tokens} tokens, {self.num_shards} shard(s)"
            f" -> {' and '.join(place) or 'memory'}; this run encoded {self.encoded_rows} rows in "
            f"{self.seconds:.1f} s ({self.items_per_second:.0f} items/s)"
        )
        if self.skipped:
            shown = ", ".join(f"{index} ({reason})" for index, reason in self.skipped[:5])
            more = (
                f" and {len(self.skipped) - 5} more (listed in the dataset card)"
                if len(self.skipped) > 5
                else ""
            )
            text += f"; skipped {len(self.skipped)} row(s) that did not decode: {shown}{more}"
        return text


def write_encoded_dataset(
    model,
    processor,
    dataset,
    output_dir: str | os.PathLike,
    *,
    split: str | None = None,
    column: str | None = None,
    mapping: CodeTokenMapping | None = None,
    keep_columns: Sequence[str] | None = None,
    batch_size: int | None = None,
    shard_size: int | None = None,
    num_workers: int = 0,
    dtype: str = "fp32",
    on_error: str = "raise",
    overwrite: bool = False,
    push_to_hub: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    accelerator=None,
    source_name: str | None = None,
    tokenizer_revision: str | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> EncodingSummary:
    """Encode one split into parquet shards under `output_dir/data/`, with a dataset card; resumable.

    Every process of an `accelerate launch` calls this with the same arguments (pass `accelerator`, an
    `Accelerator` or `PartialState`); without it the call runs as one process, even under a launcher.

    Args:
        model: a [`VQVAEModel`] (on its device; put in eval mode for the call and restored).
        processor: its [`VQVAEImageProcessor`] or [`VQVAEFeatureExtractor`].
        dataset: a `datasets.Dataset`, or an `IterableDataset` (`streaming=True`: nothing is downloaded whole).
        output_dir: the folder (shared by every process). See `output.py` for its layout.
        split: the split's name in the output (default: the dataset's own split name, else `train`).
        column: the image/audio column (default: found by name).
        mapping: also write `input_ids` (flat ids with the mapping's offset and bos/eos) and token_mapping.json.
        keep_columns: columns copied beside the codes (default: all but the media column).
        batch_size: items per forward pass (default: 64 images or 4 audio clips on CPU, where larger batches
            fall out of the caches or pad more; 4x that on an accelerator).
        shard_size: rows per part and shard (default 10,000; a resumed split keeps its own).
        num_workers: DataLoader workers that decode while the model runs (0: in the model's process).
        dtype: "fp32", or "bf16"/"fp16" autocast for the network (the nearest-code search stays fp32).
        on_error: "raise" stops at the first item that does not decode (named by its row index); "skip" leaves
            such rows out and lists them in the summary, the manifest and the dataset card.
        overwrite: replace an output of another tokenizer, mapping, precision or dataset, or a complete split
            of this one; an unfinished run of this very encoding is always resumed.
        push_to_hub: a Hub dataset repo id to upload the folder to (with `token`, `private`).
        source_name: the input's name for the card (default: the dataset's name and split). With the dataset's
            fingerprint (a stream: its files) it identifies the input, to resume it and to refuse another.
        tokenizer_revision: the tokenizer's Hub revision, for the card.
        progress: show one progress bar (main process), with items/s across all processes.

    Returns:
        An [`EncodingSummary`].
    """
    state = _ProcessState(accelerator)
    config = model.config
    modality = modality_for(config)
    if on_error not in ON_ERROR:
        raise ValueError(f"`on_error` must be one of {ON_ERROR}, got {on_error!r}.")
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {sorted(DTYPES)}, got {dtype!r}.")
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZES[modality.name] * (
            1 if next(model.parameters()).device.type == "cpu" else 4
        )
    if batch_size < 1 or (shard_size is not None and shard_size < 1):
        raise ValueError(
            f"`batch_size` and `shard_size` must be positive, got {batch_size} and {shard_size}."
        )
    if mapping is not None and mapping.codebook_size != config.codebook_size:
        raise ValueError(
            f"The mapping is for codebook_size={mapping.codebook_size} but the model has {config.codebook_size} codes."
        )
    split = split or str(getattr(dataset, "split", None) or "train")
    source = RowSource(dataset, modality, processor, column, keep_columns)
    if source.num_rows == 0:
        raise ValueError("The dataset has no rows; nothing to encode.")
    if INDEX_COLUMN in source.keep or {"codes", "input_ids"} & set(source.keep):
        clash = sorted({INDEX_COLUMN, "codes", "input_ids"} & set(source.keep))
        raise ValueError(
            f"The dataset already has column(s) {clash}; drop them or leave them out (keep_columns)."
        )
    folder = OutputFolder(output_dir, split)
    encoding = _encoding_identity(model, processor, mapping, dtype, tokenizer_revision)
    source_info = _source_identity(dataset, source, split, source_name)

    plan = None
    if state.is_main:
        try:
            plan = folder.prepare(encoding, source_info, shard_size, source.num_rows, overwrite)
        except ValueError as error:
            plan = SplitPlan(error=str(error))
    plan = state.broadcast(plan)
    if plan.error:
        raise ValueError(plan.error)

    started = time.perf_counter()
    if not plan.complete:
        encoder = _PartEncoder(
            model, modality, folder, mapping, on_error, dtype, plan.shard_size, source.kept_features
        )
        bar = _ProgressBar(state, folder, plan, progress, desc or f"Encoding {split}")
        try:
            _encode_share(source, encoder, plan, _my_parts(plan, state), bar, batch_size, num_workers)
            if state.is_main:
                _wait_for(folder.all_parts_done, folder, bar)
                if mapping is not None:
                    mapping.save_pretrained(folder.root)
                entry = folder.finalize(lambda manifest: write_card(folder.root, manifest, modality, config))
                bar.close(entry["num_source_rows"])
            else:
                _wait_for(lambda: (folder.split_entry() or {}).get("state") == "complete", folder)
        except (Exception, KeyboardInterrupt) as error:  # the other processes stop waiting for this one
            folder.write_failure(state.index, describe_error(error))
            raise
    entry = folder.split_entry()
    if push_to_hub and state.is_main:
        push_folder(folder.root, push_to_hub, split, token=token, private=private)
    return EncodingSummary(
        split=split,
        num_rows=entry["num_rows"],
        num_tokens=entry["num_tokens"],
        num_shards=len(entry["shards"]),
        encoded_rows=0 if plan.complete else entry["num_source_rows"] - plan.done_rows,
        seconds=time.perf_counter() - started,
        skipped=entry.get("skipped", []),
        output_dir=folder.root.resolve(),
        repo_id=push_to_hub,
    )


def _encode_share(source: RowSource, encoder, plan: SplitPlan, share, bar, batch_size: int, num_workers: int):
    """Encode this process's parts, each written when whole."""
    loader = make_loader(
        source,
        lambda: source.plan(share.wanted, plan.shard_size, batch_size, plan.num_rows, share.last),
        num_workers,
        pin_memory=encoder.device.type == "cuda",
    )
    with _inference_layout(encoder.model):
        for loaded in loader:
            if isinstance(loaded, StreamEnd):
                if loaded.num_rows == 0:
                    raise ValueError("The dataset has no rows; nothing to encode.")
                encoder.folder.write_end(loaded.num_rows)
                continue
            encoder.add(loaded)
            bar.advance(loaded.stop - loaded.start)
    bar.finish_own()


@contextlib.contextmanager
def _inference_layout(model):
    """The model in eval mode, its 4-D weights channels-last (oneDNN and cuDNN run such convolutions ~20% faster
    here, without reordering each batch); both restored afterwards."""
    was_training = model.training
    convolutional = [p for p in model.parameters() if p.dim() == 4]
    contiguous = all(p.is_contiguous() for p in convolutional)
    model.eval()
    if convolutional and contiguous:
        model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        if convolutional and contiguous:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)


def _wait_for(condition, folder: OutputFolder, bar=None) -> None:
    """Until `condition()` holds (the others' parts are written, or the main process has finished the split);
    raises if another process failed. The launcher ends every process when one dies."""
    while not condition():
        failures = folder.read_failures()
        if failures:
            rank, reason = failures[0]
            raise RuntimeError(f"process {rank} failed: {reason}")
        if bar is not None:
            bar.follow()
        time.sleep(POLL_EVERY_S)


def encode_dataset(
    model,
    processor,
    dataset,
    column: str | None = None,
    *,
    output_dir: str | os.PathLike | None = None,
    push_to_hub: str | None = None,
    keep_in_memory: bool | None = None,
    image_column: str | None = None,
    audio_column: str | None = None,
    **kwargs,
):
    """[`write_encoded_dataset`], then the encoded split loaded back as a `datasets.Dataset`.

    Columns: `index` (the row in the source), `codes` (per item, of the model's shape: `[h, w]`, or `[t]`
    trimmed to the real frames of audio), `input_ids` with a `mapping`, and the kept columns (e.g. `label`).
    With `output_dir` the result is `datasets.load_dataset(output_dir, split=split)`, and a folder already
    holding this encoding is reused as it is; without one (a single process only) the shards are written to
    a temporary folder and the result is kept in memory. Keyword arguments are those of
    `write_encoded_dataset`; `image_column` and `audio_column` are other names for `column`.
    """
    import datasets

    column = column or image_column or audio_column
    if output_dir is None:
        if kwargs.get("accelerator") is not None and _ProcessState(kwargs["accelerator"]).num_processes > 1:
            raise ValueError("Encoding with several processes needs an `output_dir` they all can write to.")
        with tempfile.TemporaryDirectory(prefix="vq-tokenizer-encoding-") as folder:
            summary = write_encoded_dataset(
                model, processor, dataset, folder, column=column, push_to_hub=push_to_hub, **kwargs
            )
            return _load_in_memory(Path(folder), summary.split)
    summary = write_encoded_dataset(
        model, processor, dataset, output_dir, column=column, push_to_hub=push_to_hub, **kwargs
    )
    return datasets.load_dataset(str(output_dir), split=summary.split, keep_in_memory=keep_in_memory)


def _load_in_memory(folder: Path, split: str):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    entry = OutputFolder(folder, split).split_entry()
    table = pa.concat_tables([pq.read_table(folder / shard) for shard in entry["shards"]])
    return datasets.Dataset(table, split=datasets.NamedSplit(split))


# -- processes ----------------------------------------------------------------------------------------------
class _ProcessState:
    """The process's rank among those of an accelerate launch, or a lone process."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.index = accelerator.process_index if accelerator is not None else 0
        self.num_processes = accelerator.num_processes if accelerator is not None else 1
        self.is_main = self.index == 0

    def broadcast(self, value):
        if self.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]


@dataclass
class _Share:
    """The parts one process encodes: `wanted(part)`, and the last of them when the source's length is known."""

    parts: frozenset | None  # None: every `stride`-th part from `offset` (a stream of unknown length)
    done: frozenset
    stride: int = 1
    offset: int = 0

    def wanted(self, part: int) -> bool:
        if self.parts is not None:
            return part in self.parts
        return part % self.stride == self.offset and part not in self.done

    @property
    def last(self) -> int | None:
        if self.parts is None:
            return None
        return max(self.parts, default=-1)


def _my_parts(plan: SplitPlan, state: _ProcessState) -> _Share:
    """A contiguous share of the parts not done yet when the source's length is known; else every
    `num_processes`-th part of the stream."""
    done = frozenset(plan.done)
    if plan.num_rows is None:
        return _Share(None, done, stride=state.num_processes, offset=state.index)
    pending = [part for part in range(plan.num_parts) if part not in done]
    first = len(pending) * state.index // state.num_processes
    last = len(pending) * (state.index + 1) // state.num_processes
    return _Share(frozenset(pending[first:last]), done)


# -- identities (what makes an output "another" one) ----------------------------------------------------------
def tokenizer_fingerprint(model, processor) -> str:
    """A hash of a tokenizer's config, weights and processor: the `tokenizer_fingerprint` of an encoded dataset's
    card (`read_encoding_info`), to check that codes come from the tokenizer at hand."""
    digest = hashlib.sha256()
    config = model.config.to_dict()
    config.pop("_name_or_path", None)  # where it was loaded from is not what it is
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(processor.to_json_string().encode())
    return digest.hexdigest()[:32]


def _encoding_identity(model, processor, mapping, dtype: str, revision: str | None) -> dict:
    """The tokenizer (weights, config, processor), the mapping and the precision: one encoding per folder."""
    tokenizer_fingerprint_ = tokenizer_fingerprint(model, processor)
    mapping_dict = mapping.to_dict() if mapping is not None else None
    identity = json.dumps([tokenizer_fingerprint_, mapping_dict, dtype], sort_keys=True)
    return {
        "fingerprint": hashlib.sha256(identity.encode()).hexdigest()[:32],
        "tokenizer_fingerprint": tokenizer_fingerprint_,
        "tokenizer": getattr(model.config, "name_or_path", None) or None,
        "revision": revision,
        "token_mapping": mapping_dict,
        "dtype": dtype,
        "codebook_size": model.config.codebook_size,
        "codes_layout": model.config.codes_layout,
    }


def _source_identity(dataset, source: RowSource, split: str, name: str | None) -> dict:
    """The input split: its name, and what tells it from another (a fingerprint, or a stream's files)."""
    info = getattr(dataset, "info", None)
    if name is None:
        dataset_name = (
            getattr(info, "dataset_name", None) or getattr(info, "builder_name", None) or "a dataset"
        )
        name = f"{dataset_name}[{getattr(dataset, 'split', None) or split}]"
    if source.streaming:
        files = getattr(getattr(dataset, "_ex_iterable", None), "kwargs", {}).get("files")
        content = [getattr(info, "config_name", None), str(dataset.split), dataset.num_shards, files]
    else:
        content = [getattr(dataset, "_fingerprint", None), len(dataset)]
    key = json.dumps([name, content, source.column, sorted(source.keep)], sort_keys=True, default=str)
    return {
        "id": hashlib.sha256(key.encode()).hexdigest()[:32],
        "description": f"{name}, streamed" if source.streaming else name,
        "column": source.column,
        "streaming": source.streaming,
    }


# -- encoding and writing parts -------------------------------------------------------------------------------
class _PartEncoder:
    """Runs the model on loaded batches and writes each part when its last batch is in."""

    def __init__(
        self, model, modality, folder, mapping, on_error: str, dtype: str, shard_size: int, kept_features
    ):
        import datasets

        self.model = model
        self.modality = modality
        self.folder = folder
        self.mapping = mapping
        self.on_error = on_error
        self.shard_size = shard_size
        self.device = next(model.parameters()).device
        self.autocast_dtype = DTYPES[dtype]
        self.code_dims = model.config.codes_layout.count(",")  # axes of one item's codes ([B, h, w] -> 2)
        codes_feature = datasets.Value("int64")
        for _ in range(self.code_dims):
            codes_feature = datasets.List(codes_feature)
        self.codes_feature = codes_feature
        self.kept_features = kept_features
        self._batches: list[tuple[LoadedBatch, dict[int, np.ndarray]]] = []

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def add(self, loaded: LoadedBatch) -> None:
        if loaded.errors and self.on_error == "raise":
            index, reason = loaded.errors[0]
            raise ValueError(
                f"Row {index} of the dataset does not decode ({reason}); fix or drop it, or pass "
                "--on_error skip (on_error='skip') to leave such rows out, listed in the summary and the card."
            )
        for index, reason in loaded.errors:
            logger.warning("Skipping row %d: %s", index, reason)
        codes = {}
        for indices, inputs in loaded.groups:
            values = inputs[self.modality.input_name].to(self.device, non_blocking=True)
            if values.dim() == 4:
                values = values.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), self._autocast():
                output = self.model.encode(**{self.modality.input_name: values})
            batch_codes = output.codes.cpu()
            rows = self.modality.real_codes(batch_codes, inputs, self.model.config)
            for index, row in zip(indices, rows, strict=True):
                codes[index] = row.numpy()
        self._batches.append((loaded, codes))
        if loaded.last:
            self._write(loaded.part)

    def _write(self, part_index: int) -> None:
        import pyarrow as pa

        batches, self._batches = self._batches, []
        if any(loaded.part != part_index for loaded, _ in batches):
            raise RuntimeError(f"batches of several parts arrived together at part {part_index}")
        positions = [index for loaded, _ in batches for index in loaded.positions]
        rows = [codes[index] for loaded, codes in batches for index in loaded.positions]
        columns = {
            INDEX_COLUMN: pa.array(positions, type=pa.int64()),
            "codes": _nested_list_array(rows, self.code_dims),
        }
        if self.mapping is not None:
            columns["input_ids"] = _nested_list_array(_input_ids(self.mapping, rows), 1)
        kept = pa.concat_tables([loaded.kept for loaded, _ in batches])
        for name in kept.column_names:
            columns[name] = kept.column(name)
        table = pa.table(columns)
        import datasets

        features = datasets.Features(
            {INDEX_COLUMN: datasets.Value("int64"), "codes": self.codes_feature}
            | ({"input_ids": datasets.List(datasets.Value("int64"))} if self.mapping is not None else {})
            | dict(self.kept_features or datasets.Features.from_arrow_schema(kept.schema))
        )
        table = table.cast(features.arrow_schema)
        start = batches[0][0].start
        part = Part(
            index=part_index,
            start=start,
            stop=batches[-1][0].stop,
            rows=len(positions),
            tokens=int(sum(row.size for row in rows)),
            skipped=[[index, reason] for loaded, _ in batches for index, reason in loaded.errors],
        )
        if start != part_index * self.shard_size:
            raise RuntimeError(f"part {part_index} starts at row {start}, not {part_index * self.shard_size}")
        self.folder.write_part(table, part)


def _nested_list_array(rows: list[np.ndarray], depth: int):
    """Rows of int codes (any shape, `depth` axes, shapes may differ) as a nested arrow `list<...<int64>>`."""
    import pyarrow as pa

    for row in rows:
        if row.ndim != depth:
            raise ValueError(f"expected codes with {depth} axes per item, got shape {tuple(row.shape)}")
    values = (
        np.concatenate([row.reshape(-1) for row in rows]).astype(np.int64) if rows else np.empty(0, np.int64)
    )
    array = pa.array(values, type=pa.int64())
    shapes = np.array([row.shape for row in rows], dtype=np.int64).reshape(len(rows), depth)
    for level in reversed(range(depth)):
        lists_per_row = shapes[:, :level].prod(axis=1)  # axes above `level`: 1 at the top
        lengths = np.repeat(shapes[:, level], lists_per_row)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        array = pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), array)
    return array


def _input_ids(mapping: CodeTokenMapping, rows: list[np.ndarray]) -> list[np.ndarray]:
    """`input_ids` of each item; one call for the batch when the items' codes share a shape."""
    if not rows:
        return []
    if len({row.shape for row in rows}) == 1:
        return list(mapping.codes_to_ids(torch.from_numpy(np.stack(rows))).numpy())
    return [mapping.codes_to_ids(torch.from_numpy(row)[None])[0].numpy() for row in rows]


# -- progress -------------------------------------------------------------------------------------------------
class _ProgressBar:
    """One tqdm bar on the main process, counting every process's rows: the others write their counts to
    progress files (at most every PROGRESS_EVERY_S), which the main process reads as often."""

    def __init__(self, state: _ProcessState, folder: OutputFolder, plan: SplitPlan, enabled: bool, desc: str):
        self.state = state
        self.folder = folder
        self.shared = state.num_processes > 1
        self.own = self.others = 0
        self._last_io = 0.0
        self.bar = None
        if state.is_main and enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=plan.num_rows, initial=plan.done_rows, desc=desc, unit="item", dynamic_ncols=True
            )

    def advance(self, rows: int) -> None:
        self.own += rows
        if self.state.is_main:
            self.follow()
        elif self.shared and time.monotonic() - self._last_io > PROGRESS_EVERY_S:
            self.folder.write_progress(self.state.index, self.own)
            self._last_io = time.monotonic()

    def follow(self) -> None:
        """Show the rows of every process so far (the main process's own, and the others' as last written)."""
        if self.bar is None:
            return
        if self.shared and time.monotonic() - self._last_io > PROGRESS_EVERY_S:
            self.others = self.folder.read_progress()
            self._last_io = time.monotonic()
        self.bar.update(self.bar.initial + self.own + self.others - self.bar.n)

    def finish_own(self) -> None:
        if self.shared and not self.state.is_main:
            self.folder.write_progress(self.state.index, self.own)

    def close(self, total: int | None = None) -> None:
        if self.bar is not None:
            if total is not None:
                self.bar.total = total
                self.bar.update(total - self.bar.n)
            self.bar.close()
