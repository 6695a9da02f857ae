"""The dataset card of an encoded folder (README.md: YAML that `datasets` and the Hub read, and a short text),
and the upload of the folder to a Hub dataset repo."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..token_mapping import CodeTokenMapping
from .output import CARD_SKIPPED_LIMIT, DATA_DIR

__all__ = ["EncodingInfo", "push_folder", "read_encoding_info", "write_card"]


@dataclass
class EncodingInfo:
    """What the card of an encoded dataset says about its codes (see `read_encoding_info`).

    Attributes:
        tokenizer: the tokenizer's folder or Hub repo id, as it was loaded; `revision` its Hub commit if known.
        tokenizer_fingerprint: a hash of the tokenizer's config, weights and processor (`tokenizer_fingerprint`).
        codebook_size, bits_per_code, codes_layout, dtype: the codes and the precision they were computed in.
        mapping: the `CodeTokenMapping` of the `input_ids` column, or None when there is none.
        splits: rows per split.
    """

    tokenizer: str | None
    revision: str | None
    tokenizer_fingerprint: str
    codebook_size: int
    bits_per_code: float
    codes_layout: str
    dtype: str
    mapping: CodeTokenMapping | None
    splits: dict[str, int]


def read_encoding_info(
    path_or_repo_id: str | os.PathLike, revision: str | None = None, token: str | None = None
) -> EncodingInfo:
    """Read an encoded dataset's card: a local folder written by `encode-dataset`, or a Hub dataset repo."""
    from huggingface_hub import DatasetCard, hf_hub_download

    path = Path(path_or_repo_id)
    if path.is_dir():
        readme = path / "README.md"
    else:
        readme = hf_hub_download(
            str(path_or_repo_id), "README.md", repo_type="dataset", revision=revision, token=token
        )
    data = DatasetCard.load(readme).data.to_dict()
    block = data.get("vq_tokenizer")
    if not block:
        raise ValueError(
            f"{path_or_repo_id} is not a dataset written by `vq-tokenizer encode-dataset` (its card has no codes)."
        )
    info = data.get("dataset_info") or {}
    return EncodingInfo(
        tokenizer=block.get("tokenizer"),
        revision=block.get("revision"),
        tokenizer_fingerprint=block["tokenizer_fingerprint"],
        codebook_size=block["codebook_size"],
        bits_per_code=block["bits_per_code"],
        codes_layout=block["codes_layout"],
        dtype=block["dtype"],
        mapping=CodeTokenMapping.from_dict(block["token_mapping"]) if block.get("token_mapping") else None,
        splits={split["name"]: split["num_examples"] for split in info.get("splits", [])},
    )


def write_card(root: Path, manifest: dict, modality, config) -> Path:
    """Write `root/README.md` for every complete split of `manifest`: the data files of each split, the
    features (read from a shard), row counts, and the encoding (tokenizer, revision, mapping, bits per item)."""
    import datasets
    import pyarrow.parquet as pq
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    splits = {name: entry for name, entry in manifest["splits"].items() if entry.get("state") == "complete"}
    encoding = manifest["encoding"]
    first_shard = root / next(iter(splits.values()))["shards"][0]
    features = datasets.Features.from_arrow_schema(pq.read_schema(first_shard))
    split_infos = datasets.SplitDict()
    for name, entry in splits.items():
        split_infos.add(datasets.SplitInfo(name=name, num_examples=entry["num_rows"]))
    bits_per_code = math.log2(config.codebook_size)
    card_data = DatasetCardData(
        tags=["vq-tokenizer", "tokenized", modality.name],
        vq_tokenizer={
            "tokenizer": encoding.get("tokenizer"),
            "revision": encoding.get("revision"),
            "tokenizer_fingerprint": encoding["tokenizer_fingerprint"],
            "codebook_size": config.codebook_size,
            "bits_per_code": round(bits_per_code, 4),
            "codes_layout": config.codes_layout,
            "dtype": encoding["dtype"],
            "token_mapping": encoding.get("token_mapping"),
        },
    )
    DatasetInfosDict({"default": DatasetInfo(features=features, splits=split_infos)}).to_dataset_card_data(
        card_data
    )
    MetadataConfigs(
        {"default": {"data_files": [{"split": name, "path": f"{DATA_DIR}/{name}-*"} for name in splits]}}
    ).to_dataset_card_data(card_data)
    text = (
        f"---\n{card_data.to_yaml()}\n---\n\n{_card_text(splits, encoding, modality, config, bits_per_code)}"
    )
    path = root / "README.md"
    partial = path.with_name(f".README.md.tmp-{os.getpid()}")
    DatasetCard(text).save(partial)
    os.replace(partial, path)
    return path


def _card_text(splits: dict, encoding: dict, modality, config, bits_per_code: float) -> str:
    tokenizer = encoding.get("tokenizer") or "an unnamed tokenizer"
    revision = f" (revision `{encoding['revision']}`)" if encoding.get("revision") else ""
    sources = sorted({entry["source"]["description"] for entry in splits.values()})
    rows = []
    for name, entry in splits.items():
        per_item = entry["num_tokens"] / entry["num_rows"] if entry["num_rows"] else 0.0
        rows.append(
            f"| {name} | {entry['num_rows']} | {len(entry['shards'])} | {per_item:.6g} | "
            f"{per_item * bits_per_code:.6g} | {len(entry.get('skipped', []))} |"
        )
    mapping = encoding.get("token_mapping")
    ids = (
        f"- `input_ids`: the codes as a language model's ids, `offset + code` flattened row-major, with the "
        f"begin/end ids of the mapping: `{json.dumps(mapping, sort_keys=True)}` (also in `token_mapping.json`; "
        "`vq_tokenizer.CodeTokenMapping.from_pretrained(this repo)` turns ids back into codes).\n"
        if mapping
        else ""
    )
    skipped_lines = []
    for name, entry in splits.items():
        skipped = entry.get("skipped", [])
        if skipped:
            shown = ", ".join(f"{index} ({reason})" for index, reason in skipped[:CARD_SKIPPED_LIMIT])
            more = (
                f", and {len(skipped) - CARD_SKIPPED_LIMIT} more" if len(skipped) > CARD_SKIPPED_LIMIT else ""
            )
            skipped_lines.append(f"- {name}: {shown}{more}")
    skipped_text = (
        "\n## Rows left out\n\nThese source rows did not decode and are not in the data (by `index`):\n\n"
        + "\n".join(skipped_lines)
        + "\n"
        if skipped_lines
        else ""
    )
    return f"""# Tokens of {", ".join(sources)}

Each {modality.name} of {", ".join(sources)} as discrete codes of the VQ-VAE tokenizer `{tokenizer}`{revision}:
{config.codebook_size} codes ({bits_per_code:.4g} bits each), `{config.codes_layout}` per batch, written by
`vq-tokenizer encode-dataset` (precision: {encoding["dtype"]}).

| split | rows | shards | codes per item | bits per item | rows left out |
|---|---|---|---|---|---|
{chr(10).join(rows)}

## Columns

- `index`: the row's index in the source split (rows keep the source order).
- `codes`: the item's codes, int64 in `[0, {config.codebook_size})`, nested as the tokenizer returns one item
  (`{config.codes_layout.replace("B, ", "")}`; audio trimmed to its real frames).
{ids}- every other column is copied from the source (e.g. labels, captions).

## Use

```python
from datasets import load_dataset

codes = load_dataset("<this repo or folder>", split="{next(iter(splits))}")
```
{skipped_text}"""


def push_folder(
    root: Path, repo_id: str, split: str, token: str | None = None, private: bool | None = None
) -> str:
    """Upload the card, `data/` and token_mapping.json to the dataset repo `repo_id` in one commit, deleting
    the repo's older shards of `split`. Returns the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=str(root),
        allow_patterns=["README.md", f"{DATA_DIR}/*.parquet", "token_mapping.json"],
        delete_patterns=[f"{DATA_DIR}/{split}-*.parquet"],
        commit_message=f"Encoded split {split} with vq-tokenizer",
    )
    return str(commit)
