"""Evaluation of a tokenizer over a whole eval set, on one or many processes, with pictures.

What is measured per batch comes from the model's modality (`vq_tokenizer.modalities`): images: MSE, PSNR
and SSIM on [0, 1] images (data range 1); audio: SI-SNR, STOI, wideband PESQ and log-mel L1 over the real
(unpadded) samples (`metrics.speech_metrics_per_item`). Both: codebook usage and perplexity of the codes over
the whole set. Per-item values and codes are gathered with `accelerator.gather_for_metrics`, so every process
returns the same figures.

Audio is also reported the way codec papers report it: per bitrate (a residual quantizer decodes from its
first n levels) and per clip group (the eval set's `speaker`/`source` columns, `speech_corpus.clip_group`:
synthetic voices, real recordings, the noise clip), in `metrics["speech_table"]`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .metrics import CodebookStats
from .modalities import modality_for
from .modalities.base import level_counts

logger = logging.getLogger(__name__)

__all__ = ["MAX_EXAMPLES", "evaluate", "save_usage_histogram"]

MAX_EXAMPLES = 3  # decoded examples written with the final pictures (one per clip group first)


def _mean(values: torch.Tensor, skip_nan: bool) -> float:
    if skip_nan:
        values = values[~torch.isnan(values)]
        if values.numel() == 0:
            return math.nan
    return float(values.mean())


@torch.no_grad()
def evaluate(
    accelerator,
    model,
    loader,
    processor,
    picture_dir: str | Path | None = None,
    step: int | None = None,
    final: bool = False,
    num_quantizers: Sequence[int] | None = None,
) -> dict:
    """Figures over all of `loader`; every process must call it (it gathers).

    Returns the flat figures of the full model over every item (`psnr`, `ssim`, `mse`, `psnr_of_mean_mse`;
    audio: `si_snr`, `stoi`, `pesq`, `mel_l1`, with `pesq_items` the clips PESQ could score: the others,
    NaN, are left out of its mean), `codebook_usage`, `perplexity`, `num_eval_items` and the modality's token
    figures. Audio adds `speech_table`: one row per level count and clip group, `{"levels": n, "kbps": ...,
    "group": "all" | "synthetic" | "recorded" | "noise", "items": count, "si_snr", "stoi", "pesq",
    "pesq_items", "mel_l1"}`, each bitrate decoded from `codes[:, :n]`; groups come from the batches'
    `eval_group` (loaders built with `collate_examples(..., with_groups=True)`), else every item is "all".

    Args:
        num_quantizers: the level counts to report (audio; a residual quantizer's levels, e.g. `[3, 6, 12]`);
            default: Q/4, Q/2 and Q for a residual quantizer (the full Q only when not `final`), the model
            itself otherwise.

    Writes, on the main process, the modality's picture (`reconstructions.png` for images, `spectrogram.png`
    for audio) and, when `final`, `codebook_usage.png` into `picture_dir` (intermediate evaluations:
    `reconstructions-<step>.png`). Audio, when `final`: a few decoded clips at each bitrate and, for several
    bitrates, their spectrograms (`examples/`, indexed by `examples/examples.json`; picked among the clips
    the main process evaluated itself, one per clip group first).
    """
    model = accelerator.unwrap_model(model)
    was_training = model.training
    model.eval()
    config = model.config
    modality = modality_for(config)
    if modality.table_key is None and num_quantizers is not None:
        raise ValueError(f"num_quantizers: per-level evaluation is reported for audio, not {modality.name}.")
    levels = []
    if modality.table_key:
        # Intermediate evaluations (training's `eval_every`) measure the full model only, unless asked.
        full_only = not final and num_quantizers is None
        levels = [config.codes_per_position] if full_only else level_counts(config, num_quantizers)
    # Residual quantizers: every level's K codes count apart (the modality offsets level l's codes by l * K).
    stats = CodebookStats(config.codes_per_position * config.codebook_size)
    totals: dict[str, list[torch.Tensor]] = {}
    level_totals: dict[int, dict[str, list[torch.Tensor]]] = {count: {} for count in levels}
    group_totals: list[torch.Tensor] = []
    example = None
    want_examples = bool(levels) and final and picture_dir is not None and accelerator.is_main_process
    candidates: dict[str, list] = {}  # group -> the first items of that group seen here
    for batch in loader:
        keep_items = want_examples and sum(len(v) for v in candidates.values()) < MAX_EXAMPLES * 4
        measured = modality.measure(
            model,
            batch,
            processor,
            keep_example=example is None,
            num_quantizers=levels,
            keep_items=keep_items,
        )
        example = measured.example if example is None else example
        # Items of different lengths give code grids of different sizes on each process; pad before gathering.
        codes = accelerator.pad_across_processes(measured.codes, dim=1, pad_index=-1)
        device = codes.device
        groups = batch.get("eval_group") if isinstance(batch, dict) else None
        if groups is None:
            groups = torch.zeros(codes.shape[0], dtype=torch.long)
        values = {key: value.to(device) for key, value in measured.values.items()}
        per_level = {
            str(count): {key: value.to(device) for key, value in figures.items()}
            for count, figures in measured.level_values.items()
        }
        gathered = accelerator.gather_for_metrics((values, codes, per_level, groups.to(device)))
        for key, value in gathered[0].items():
            totals.setdefault(key, []).append(value.double().cpu())
        all_codes = gathered[1]
        stats.update(all_codes[all_codes >= 0])
        for count, figures in gathered[2].items():
            for key, value in figures.items():
                level_totals[int(count)].setdefault(key, []).append(value.double().cpu())
        group_totals.append(gathered[3].cpu())
        if measured.items:
            for item, group in zip(measured.items, groups.tolist(), strict=True):
                kept = candidates.setdefault(modality.eval_groups[group], [])
                if len(kept) < MAX_EXAMPLES:
                    kept.append(item)
    optional = set(modality.optional_figures)
    metrics = {key: _mean(torch.cat(value), key in optional) for key, value in totals.items()}
    for key in optional & set(totals):
        metrics[f"{key}_items"] = int((~torch.isnan(torch.cat(totals[key]))).sum())
    if "mse" in totals:
        # PSNR of the mean MSE too: the figure papers usually report alongside the per-image mean.
        mean_mse = float(torch.cat(totals["mse"]).mean())
        metrics["psnr_of_mean_mse"] = float(10 * np.log10(1.0 / max(mean_mse, 1e-12)))
    metrics["codebook_usage"] = stats.usage
    metrics["perplexity"] = stats.perplexity
    metrics["num_eval_items"] = int(sum(len(value) for value in next(iter(totals.values()), [])))
    metrics.update(modality.token_figures(config, example))
    if modality.table_key and group_totals:
        metrics[modality.table_key] = _table(
            modality, config, level_totals, torch.cat(group_totals), optional
        )
    if accelerator.is_main_process and picture_dir is not None and example is not None:
        picture_dir = Path(picture_dir)
        picture_dir.mkdir(parents=True, exist_ok=True)
        suffix = "" if final or step is None else f"-{step:08d}"
        modality.save_picture(example, config, picture_dir / f"{modality.picture_stem}{suffix}.png")
        if final:
            save_usage_histogram(stats.counts, picture_dir / "codebook_usage.png")
        if want_examples and candidates:
            items, groups = _pick_examples(candidates, modality.eval_groups)
            modality.save_examples(items, groups, config, picture_dir)
    model.train(was_training)
    return metrics


def _table(modality, config, level_totals: dict, groups: torch.Tensor, optional: set[str]) -> list[dict]:
    """One row per level count and group: "all" (every item), then each group the eval set has."""
    rows = []
    for count in sorted(level_totals):
        figures = {key: torch.cat(value) for key, value in level_totals[count].items()}
        for index, name in enumerate(modality.eval_groups):
            chosen = torch.ones_like(groups, dtype=torch.bool) if name == "all" else groups == index
            items = int(chosen.sum())
            if name != "all" and items == 0:
                continue
            row = {"levels": count, **modality.rate_figures(config, count), "group": name, "items": items}
            for key, value in figures.items():
                row[key] = _mean(value[chosen], key in optional) if items else math.nan
                if key in optional:
                    row[f"{key}_items"] = int((~torch.isnan(value[chosen])).sum())
            rows.append(row)
    return rows


def _pick_examples(candidates: dict[str, list], group_order: Sequence[str]) -> tuple[list, list[str]]:
    """Up to MAX_EXAMPLES items: the first of each group (in `group_order`, "all" last), then the next ones."""
    order = [name for name in group_order if name != "all" and name in candidates]
    order += [name for name in candidates if name not in order]
    items, groups = [], []
    for depth in range(MAX_EXAMPLES):
        for name in order:
            if len(items) < MAX_EXAMPLES and depth < len(candidates[name]):
                items.append(candidates[name][depth])
                groups.append(name)
    return items, groups


def save_usage_histogram(counts: torch.Tensor, path: str | Path) -> Path:
    """Codes sorted by use, as a bar chart (matplotlib, no display needed)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry is touched

    counts = counts.float().cpu()
    ordered = counts.sort(descending=True).values.numpy()
    share = ordered / max(1.0, ordered.sum())
    figure = Figure(figsize=(8, 3), dpi=100)
    axis = figure.subplots()
    axis.bar(np.arange(len(share)), share, width=1.0, color="#3b6ea8")
    axis.set_xlabel("code (sorted by use)")
    axis.set_ylabel("share of tokens")
    used = int((counts > 0).sum())
    axis.set_title(f"Codebook usage: {used}/{len(counts)} codes used ({100 * used / len(counts):.1f}%)")
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)
