"""Evaluation of a tokenizer over a whole eval set, on one or many processes, with pictures.

What is measured per batch comes from the model's modality (`vq_tokenizer.modalities`): images: MSE, PSNR
and SSIM on [0, 1] images (data range 1); audio: SI-SNR over the real (unpadded) samples. Both: codebook
usage and perplexity of the codes over the whole set. Per-item values and codes are gathered with
`accelerator.gather_for_metrics`, so every process returns the same figures.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .metrics import CodebookStats
from .modalities import modality_for

logger = logging.getLogger(__name__)

__all__ = ["evaluate", "save_usage_histogram"]


@torch.no_grad()
def evaluate(
    accelerator,
    model,
    loader,
    processor,
    picture_dir: str | Path | None = None,
    step: int | None = None,
    final: bool = False,
) -> dict:
    """Figures over all of `loader`; every process must call it (it gathers).

    Writes, on the main process, the modality's picture (`reconstructions.png` for images, `spectrogram.png`
    for audio) and, when `final`, `codebook_usage.png` into `picture_dir` (intermediate evaluations:
    `reconstructions-<step>.png`).
    """
    model = accelerator.unwrap_model(model)
    was_training = model.training
    model.eval()
    config = model.config
    modality = modality_for(config)
    # Residual quantizers: every level's K codes count apart (the modality offsets level l's codes by l * K).
    stats = CodebookStats(config.codes_per_position * config.codebook_size)
    totals: dict[str, list[torch.Tensor]] = {}
    example = None
    for batch in loader:
        measured = modality.measure(model, batch, processor, keep_example=example is None)
        example = measured.example if example is None else example
        # Items of different lengths give code grids of different sizes on each process; pad before gathering.
        codes = accelerator.pad_across_processes(measured.codes, dim=1, pad_index=-1)
        gathered = accelerator.gather_for_metrics((measured.values, codes))
        for key, value in gathered[0].items():
            totals.setdefault(key, []).append(value.float().cpu())
        all_codes = gathered[1]
        stats.update(all_codes[all_codes >= 0])
    metrics = {key: float(torch.cat(value).mean()) for key, value in totals.items()}
    if "mse" in totals:
        # PSNR of the mean MSE too: the figure papers usually report alongside the per-image mean.
        mean_mse = float(torch.cat(totals["mse"]).mean())
        metrics["psnr_of_mean_mse"] = float(10 * np.log10(1.0 / max(mean_mse, 1e-12)))
    metrics["codebook_usage"] = stats.usage
    metrics["perplexity"] = stats.perplexity
    metrics["num_eval_items"] = int(sum(len(value) for value in next(iter(totals.values()), [])))
    metrics.update(modality.token_figures(config, example))
    if accelerator.is_main_process and picture_dir is not None and example is not None:
        picture_dir = Path(picture_dir)
        picture_dir.mkdir(parents=True, exist_ok=True)
        suffix = "" if final or step is None else f"-{step:08d}"
        modality.save_picture(example, config, picture_dir / f"{modality.picture_stem}{suffix}.png")
        if final:
            save_usage_histogram(stats.counts, picture_dir / "codebook_usage.png")
    model.train(was_training)
    return metrics


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
