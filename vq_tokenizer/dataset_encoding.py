"""Tokenise a whole `datasets.Dataset` with a tokenizer: a `codes` column (and `input_ids` with a mapping).

[`encode_dataset`] runs `dataset.map(batched=True)` without gradients, keeps the other columns (labels),
drops the images or audio, and saves atomically with `save_to_disk`; a re-run over a current output folder
reuses it. `vq-tokenizer encode-dataset` is its command line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from .modalities import modality_for
from .token_mapping import CodeTokenMapping

__all__ = ["ENCODING_INFO_NAME", "encode_dataset"]

logger = logging.getLogger(__name__)

ENCODING_INFO_NAME = "vq_tokenizer_encoding.json"


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
    column: str | None = None,
    *,
    batch_size: int = 256,
    mapping: CodeTokenMapping | None = None,
    output_dir: str | os.PathLike | None = None,
    push_to_hub: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    overwrite: bool = False,
    keep_in_memory: bool | None = None,
    desc: str = "Encoding",
    image_column: str | None = None,
    audio_column: str | None = None,
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
        column: the input column; found by name (`image`, `img`... / `audio`...) if unset. `image_column` and
            `audio_column` are other names for it.
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

    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"`dataset` must be a datasets.Dataset (one split), got {type(dataset).__name__}; pass e.g. "
            "`dataset_dict['train']` (streaming datasets are not supported)."
        )
    config = model.config
    modality = modality_for(config)
    column = modality.find_column(dataset.column_names, column or image_column or audio_column)
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

    def encode_batch(batch: dict) -> dict:
        inputs = modality.batch(processor, batch[column], batch.get("sampling_rate"))
        codes = model.encode(**{modality.input_name: inputs[modality.input_name].to(device)}).codes.cpu()
        rows = modality.real_codes(codes, inputs, config)
        result = {"codes": [row.numpy() for row in rows]}
        if mapping is not None:
            result["input_ids"] = _input_ids(mapping, rows)
        return result

    features = dataset.features.copy()
    del features[column]
    features["codes"] = modality.codes_feature()
    if mapping is not None:
        features["input_ids"] = datasets.List(datasets.Value("int64"))

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


def _input_ids(mapping: CodeTokenMapping, rows: list[torch.Tensor]) -> list:
    """`input_ids` of each item; one call for the batch when the items' codes share a shape."""
    if len({tuple(row.shape) for row in rows}) == 1:
        return list(mapping.codes_to_ids(torch.stack(rows)).numpy())
    return [mapping.codes_to_ids(row[None])[0].numpy() for row in rows]


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
