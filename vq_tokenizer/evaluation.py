"""Evaluation of a tokenizer over a whole eval set, on one or many processes, with pictures.

Images: MSE, PSNR and SSIM on [0, 1] images (data range 1). Audio: SI-SNR over the real (unpadded)
samples. Both: codebook usage and perplexity of the codes over the whole set. Per-item values and codes
are gathered with `accelerator.gather_for_metrics`, so every process returns the same figures.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .metrics import CodebookStats, mse_per_image, psnr_per_image, si_snr_per_item, ssim_per_image

logger = logging.getLogger(__name__)

GRID_IMAGES = 16


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

    Writes, on the main process, `reconstructions.png` (images) or `spectrogram.png` (audio) and, when
    `final`, `codebook_usage.png` into `picture_dir` (intermediate evaluations: `reconstructions-<step>.png`).
    """
    model = accelerator.unwrap_model(model)
    was_training = model.training
    model.eval()
    config = model.config
    stats = CodebookStats(config.codebook_size)
    totals: dict[str, list[torch.Tensor]] = {}
    first_batch = None
    for batch in loader:
        if config.modality == "image":
            pixel_values = batch["pixel_values"]
            output = model(pixel_values=pixel_values)
            originals = processor.postprocess(pixel_values, output_type="pt")
            reconstructions = processor.postprocess(output.reconstruction, output_type="pt")
            values = {
                "mse": mse_per_image(reconstructions, originals),
                "psnr": psnr_per_image(reconstructions, originals),
                "ssim": ssim_per_image(reconstructions, originals),
            }
            codes = output.codes.flatten(1)
            if first_batch is None:
                first_batch = (originals[:GRID_IMAGES].cpu(), reconstructions[:GRID_IMAGES].cpu())
        else:
            input_values, mask = batch["input_values"], batch["padding_mask"]
            output = model(input_values=input_values, padding_mask=mask)
            values = {"si_snr": si_snr_per_item(output.reconstruction, input_values, mask)}
            # A code counts when its first sample is real audio; padding-only frames are left out.
            frame_mask = mask[:, :: config.hop_length].bool()
            codes = torch.where(frame_mask, output.codes, torch.full_like(output.codes, -1))
            if first_batch is None:
                real = int(mask[0].sum())
                first_batch = (
                    input_values[0, :, :real].cpu(),
                    output.reconstruction[0, :, :real].float().cpu(),
                )
        # Items of different lengths give code grids of different sizes on each process; pad before gathering.
        codes = accelerator.pad_across_processes(codes, dim=1, pad_index=-1)
        gathered = accelerator.gather_for_metrics((values, codes))
        for key, value in gathered[0].items():
            totals.setdefault(key, []).append(value.float().cpu())
        all_codes = gathered[1]
        stats.update(all_codes[all_codes >= 0])
    metrics = {key: float(torch.cat(value).mean()) for key, value in totals.items()}
    if "psnr" in totals:
        # PSNR of the mean MSE too: the figure papers usually report alongside the per-image mean.
        mean_mse = float(torch.cat(totals["mse"]).mean())
        metrics["psnr_of_mean_mse"] = float(10 * np.log10(1.0 / max(mean_mse, 1e-12)))
    metrics["codebook_usage"] = stats.usage
    metrics["perplexity"] = stats.perplexity
    metrics["num_eval_items"] = int(sum(len(value) for value in next(iter(totals.values()), [])))
    if config.modality == "audio":
        metrics["tokens_per_second"] = config.frame_rate
    else:
        metrics["tokens_per_image"] = (
            int(first_batch[0].shape[-2] * first_batch[0].shape[-1] / config.downsampling_factor**2)
            if first_batch
            else 0
        )
    if accelerator.is_main_process and picture_dir is not None and first_batch is not None:
        picture_dir = Path(picture_dir)
        picture_dir.mkdir(parents=True, exist_ok=True)
        suffix = "" if final or step is None else f"-{step:08d}"
        if config.modality == "image":
            save_reconstruction_grid(*first_batch, picture_dir / f"reconstructions{suffix}.png")
        else:
            save_spectrograms(*first_batch, config.sampling_rate, picture_dir / f"spectrogram{suffix}.png")
        if final:
            save_usage_histogram(stats.counts, picture_dir / "codebook_usage.png")
    model.train(was_training)
    return metrics


def save_reconstruction_grid(
    originals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path
) -> Path:
    """Two rows per group of 8 (originals above, reconstructions below), from `[N, C, H, W]` in [0, 1]."""
    from PIL import Image

    per_row = min(8, originals.shape[0])
    rows = []
    for start in range(0, originals.shape[0], per_row):
        for images in (originals, reconstructions):
            chunk = images[start : start + per_row]
            if chunk.shape[0] < per_row:
                chunk = torch.cat([chunk, torch.zeros(per_row - chunk.shape[0], *chunk.shape[1:])])
            rows.append(torch.cat(list(chunk), dim=-1))
    grid = torch.cat(rows, dim=-2).clamp(0, 1)
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    scale = max(1, 256 // max(1, originals.shape[-1]))
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.save(path)
    return Path(path)


def save_usage_histogram(counts: torch.Tensor, path: str | Path) -> Path:
    """Codes sorted by use, as a bar chart (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = counts.float().cpu()
    ordered = counts.sort(descending=True).values.numpy()
    share = ordered / max(1.0, ordered.sum())
    figure, axis = plt.subplots(figsize=(8, 3), dpi=100)
    axis.bar(np.arange(len(share)), share, width=1.0, color="#3b6ea8")
    axis.set_xlabel("code (sorted by use)")
    axis.set_ylabel("share of tokens")
    used = int((counts > 0).sum())
    axis.set_title(f"Codebook usage: {used}/{len(counts)} codes used ({100 * used / len(counts):.1f}%)")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def save_spectrograms(
    original: torch.Tensor, reconstruction: torch.Tensor, sampling_rate: int, path: str | Path
) -> Path:
    """Log-magnitude spectrograms of the first channel, original above reconstruction, on one colour scale
    (the original's peak down to 100 dB below it; digital silence shows as the darkest colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import mlab

    spectra = [
        mlab.specgram(signal[0].numpy(), NFFT=512, Fs=sampling_rate, noverlap=384)
        for signal in (original, reconstruction)
    ]
    peak = max(float(spectra[0][0].max()), 1e-20)
    vmax = 10 * np.log10(peak)
    figure, axes = plt.subplots(2, 1, figsize=(8, 5), dpi=100, sharex=True)
    for axis, (power, freqs, _), title in zip(axes, spectra, ("original", "reconstruction"), strict=True):
        decibels = 10 * np.log10(np.maximum(power, peak * 1e-10))  # digital silence: the darkest colour
        duration = original.shape[-1] / sampling_rate
        axis.imshow(
            decibels,
            origin="lower",
            aspect="auto",
            extent=(0, duration, freqs[0], freqs[-1]),
            cmap="magma",
            vmin=vmax - 100,
            vmax=vmax,
        )
        axis.set_title(title)
        axis.set_ylabel("Hz")
    axes[-1].set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)
