"""Reconstruction and codebook metrics for VQ-VAE tokenizers.

Pure functions on batched torch tensors. Each image metric comes in two forms:

- `*_per_image` / `si_snr_per_item` return a float64 tensor `[B]` with one value per item, so an eval loop
  can concatenate (or gather across processes) and average over the whole eval set;
- the short name (`mse`, `psnr`, `ssim`, `si_snr`) returns a python float, the mean of those values.

Images are `[B, C, H, W]` in a known range (`data_range`, 1.0 for images in [0, 1]); audio is `[B, T]` or
`[B, C, T]`. Codebook statistics work on code counts, which sum across batches and processes.

`speech_metrics_per_item` gives the figures codec papers report (SI-SNR, STOI, wideband PESQ, log-mel L1), one
value per clip; STOI and PESQ need the `pystoi` and `pesq` packages (`pip install "vq-tokenizer[audio]"`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CodebookStats",
    "code_counts",
    "codebook_usage",
    "mse",
    "mse_per_image",
    "perplexity",
    "psnr",
    "psnr_per_image",
    "si_snr",
    "si_snr_per_item",
    "speech_metrics_per_item",
    "ssim",
    "ssim_per_image",
]


def _check_pair(x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if x.shape != y.shape:
        raise ValueError(
            f"{name} needs two tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    if x.dim() < 2:
        raise ValueError(f"{name} needs a batch: tensors of shape [B, ...], got shape {tuple(x.shape)}.")


# --------------------------------------------------------------------------------------------------- MSE, PSNR


def mse_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each item.

    Args:
        x, y: tensors of the same shape `[B, ...]` (e.g. images `[B, C, H, W]`).

    Returns:
        float64 tensor `[B]`: the mean of `(x - y) ** 2` over all but the batch dimension.
    """
    _check_pair(x, y, "mse")
    diff = x.detach().to(torch.float64) - y.detach().to(torch.float64)
    return diff.pow(2).flatten(1).mean(dim=1)


def mse(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared error over the whole batch (all items have the same size, so this is also the mean of
    `mse_per_image`).

    Args:
        x, y: tensors of the same shape `[B, ...]`.

    Returns:
        `float`.
    """
    return mse_per_image(x, y).mean().item()


def psnr_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image, `10 * log10(data_range ** 2 / mse)`, in dB.

    Args:
        x, y: images `[B, C, H, W]` (any `[B, ...]` works) in a range of width `data_range`.
        data_range: the difference between the largest and smallest possible value (1.0 for [0, 1],
            2.0 for [-1, 1], 255 for uint8 values).

    Returns:
        float64 tensor `[B]`. An image identical to its reference (MSE 0) gets `inf`.
    """
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}.")
    # log10(0) is -inf, so MSE 0 gives +inf without a special case.
    return 10.0 * torch.log10(data_range**2 / mse_per_image(x, y))


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> float:
    """Per-image PSNR averaged over the images of the batch (not the PSNR of the batch-mean MSE), in dB.

    Args:
        x, y: images `[B, C, H, W]` in a range of width `data_range`.
        data_range: see `psnr_per_image`.

    Returns:
        `float`; `float("inf")` if any image equals its reference exactly. Use `psnr_per_image` to see
        or filter the per-image values.
    """
    return psnr_per_image(x, y, data_range).mean().item()


# -------------------------------------------------------------------------------------------------------- SSIM

SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _gaussian_kernel_1d(
    window_size: int, sigma: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    coords = torch.arange(window_size, dtype=torch.float64, device=device) - (window_size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).to(dtype)


def ssim_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004, https://doi.org/10.1109/TIP.2003.819861) of each image.

    Gaussian window of 11 taps with sigma 1.5, K1 = 0.01, K2 = 0.03, population (co)variances. The SSIM map
    is taken over the positions where the whole window lies inside the image and averaged over those
    positions and over channels, which matches `skimage.metrics.structural_similarity(...,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range, channel_axis=...)`.

    Args:
        x, y: images `[B, C, H, W]` with H, W >= 11, in a range of width `data_range`.
        data_range: the difference between the largest and smallest possible value.

    Returns:
        float64 tensor `[B]`, each value in [-1, 1] (1 for identical images, constant ones included).
    """
    _check_pair(x, y, "ssim")
    if x.dim() != 4:
        raise ValueError(f"ssim needs images of shape [B, C, H, W], got shape {tuple(x.shape)}.")
    if min(x.shape[-2:]) < SSIM_WINDOW_SIZE:
        raise ValueError(
            f"ssim needs images at least {SSIM_WINDOW_SIZE}x{SSIM_WINDOW_SIZE} (the Gaussian window), "
            f"got {x.shape[-2]}x{x.shape[-1]}."
        )
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}.")

    # float64 keeps `E[x^2] - E[x]^2` accurate; SSIM is an eval metric, not a hot path.
    x = x.detach().to(torch.float64)
    y = y.detach().to(torch.float64)
    channels = x.shape[1]
    kernel = _gaussian_kernel_1d(SSIM_WINDOW_SIZE, SSIM_SIGMA, x.dtype, x.device)

    # One grouped, separable, unpadded ("valid") convolution filters the five moment maps at once.
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B, 5C, H, W]
    groups = stacked.shape[1]
    filtered = F.conv2d(stacked, kernel.view(1, 1, 1, -1).expand(groups, 1, 1, -1), groups=groups)
    filtered = F.conv2d(filtered, kernel.view(1, 1, -1, 1).expand(groups, 1, -1, 1), groups=groups)
    mu_x, mu_y, e_xx, e_yy, e_xy = filtered.split(channels, dim=1)

    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    return ssim_map.flatten(1).mean(dim=1)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean over the batch of `ssim_per_image` (see there for the definition).

    Args:
        x, y: images `[B, C, H, W]` with H, W >= 11, in a range of width `data_range`.
        data_range: the difference between the largest and smallest possible value.

    Returns:
        `float`.
    """
    return ssim_per_image(x, y, data_range).mean().item()


# ------------------------------------------------------------------------------------------------------ SI-SNR


def si_snr_per_item(
    estimate: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Scale-invariant signal-to-noise ratio (Le Roux et al. 2019, https://arxiv.org/abs/1811.02508) in dB.

    Per item and channel, over the valid samples only: both signals are made zero-mean,
    `target = (<estimate, reference> / ||reference||^2) * reference`, `noise = estimate - target`, and
    `SI-SNR = 10 * log10(||target||^2 / ||noise||^2)`; channels are then averaged.

    A tiny epsilon (float64 machine epsilon) sits in numerator and denominator, so a perfect (or rescaled)
    estimate gives a very large finite value (> 100 dB) and a silent reference a very low one, never NaN.

    Args:
        estimate, reference: waveforms `[B, T]` or `[B, C, T]` of the same shape.
        mask: optional `[B, T]` (1/True = real sample, 0/False = padding), e.g. the feature extractor's
            `padding_mask`; padded samples are ignored.

    Returns:
        float64 tensor `[B]`.
    """
    _check_pair(estimate, reference, "si_snr")
    if estimate.dim() not in (2, 3):
        raise ValueError(f"si_snr needs waveforms of shape [B, T] or [B, C, T], got {tuple(estimate.shape)}.")
    estimate = estimate.detach().to(torch.float64)
    reference = reference.detach().to(torch.float64)
    if estimate.dim() == 2:
        estimate, reference = estimate.unsqueeze(1), reference.unsqueeze(1)
    batch, _, length = estimate.shape
    if mask is None:
        weights = torch.ones(batch, 1, length, dtype=torch.float64, device=estimate.device)
    else:
        if mask.shape != (batch, length):
            raise ValueError(f"mask must have shape [B, T] = {(batch, length)}, got {tuple(mask.shape)}.")
        weights = mask.to(device=estimate.device, dtype=torch.float64).unsqueeze(1)
        if (weights.sum(dim=-1) == 0).any():
            raise ValueError("mask marks no valid sample for at least one item; SI-SNR is undefined there.")

    num_valid = weights.sum(dim=-1, keepdim=True)
    estimate = (estimate - (estimate * weights).sum(-1, keepdim=True) / num_valid) * weights
    reference = (reference - (reference * weights).sum(-1, keepdim=True) / num_valid) * weights

    eps = torch.finfo(torch.float64).eps
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True) + eps)
    target = scale * reference
    noise = estimate - target
    ratio = (target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps)
    return (10.0 * torch.log10(ratio)).mean(dim=1)


def si_snr(estimate: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean over the batch of `si_snr_per_item` (see there), in dB.

    Args:
        estimate, reference: waveforms `[B, T]` or `[B, C, T]`.
        mask: optional `[B, T]` padding mask (1 = real sample).

    Returns:
        `float`.
    """
    return si_snr_per_item(estimate, reference, mask).mean().item()


# ---------------------------------------------------------------------------------------------- speech metrics

PESQ_SAMPLING_RATE = 16000  # wideband PESQ (ITU-T P.862.2) scores 16 kHz signals
MEL_NUM_BINS = 80
MEL_N_FFT = 1024
MEL_HOP_LENGTH = 256
MEL_LOG_FLOOR = 1e-5


def _log_mel(waveform: torch.Tensor, mel_filters: torch.Tensor) -> torch.Tensor:
    """Natural log of the mel power spectrogram `[frames, mels]` of a 1-D float64 waveform."""
    window = torch.hann_window(MEL_N_FFT, dtype=torch.float64, device=waveform.device)
    stft = torch.stft(
        waveform,
        n_fft=MEL_N_FFT,
        hop_length=MEL_HOP_LENGTH,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )  # [freqs, frames]
    power = stft.abs().pow(2)
    return torch.log(torch.clamp(power.T @ mel_filters, min=MEL_LOG_FLOOR))


def _pesq_or_nan(reference, estimate, sampling_rate: int) -> float:
    import pesq

    from .media_io import resample

    if not (np.abs(reference).max(initial=0.0) > 0 or np.abs(estimate).max(initial=0.0) > 0):
        return math.nan  # both silent: pesq would divide by a zero peak before finding no utterance
    if sampling_rate != PESQ_SAMPLING_RATE:
        reference = resample(reference, sampling_rate, PESQ_SAMPLING_RATE)
        estimate = resample(estimate, sampling_rate, PESQ_SAMPLING_RATE)
    try:
        return float(pesq.pesq(PESQ_SAMPLING_RATE, reference, estimate, "wb"))
    except pesq.PesqError:  # NoUtterancesError (nothing said: noise, silence), BufferTooShortError, ...
        return math.nan


def speech_metrics_per_item(
    estimate: torch.Tensor,
    reference: torch.Tensor,
    mask: torch.Tensor | None = None,
    sampling_rate: int = 16000,
) -> dict[str, torch.Tensor]:
    """The figures speech codec papers report, one value per clip.

    - `si_snr`: `si_snr_per_item` (dB; channels scored separately and averaged).
    - `stoi`: short-time objective intelligibility (Taal et al. 2011), `pystoi.stoi(..., extended=False)`,
      in [0, 1] (1 for identical signals).
    - `pesq`: wideband PESQ (ITU-T P.862.2) MOS-LQO from the `pesq` package, about 1.0-4.64; the clips are
      resampled to 16 kHz with `media_io.resample` when `sampling_rate` differs. NaN where PESQ cannot score
      a clip: both signals silent, or one of the package's own errors (`pesq.PesqError`: no utterance found,
      a clip shorter than about a quarter second). Note that PESQ's level alignment finds "speech" in steady
      noise, so a noise clip does get a (meaningless) score: report noise apart (`speech_corpus.clip_group`).
    - `mel_l1`: mean absolute difference of log-mel spectrograms: natural log of the mel power (clamped at
      1e-5), 80 mels from 0 to `sampling_rate / 2` (slaney scale and norm, `transformers.audio_utils.
      mel_filter_bank`), Hann window, n_fft 1024, hop 256, zero-padded centred frames. 0 for identical
      signals.

    STOI, PESQ and mel L1 score mono signals: a multichannel clip is first mixed down by the mean over its
    channels (the way `media_io` makes audio mono).

    Args:
        estimate, reference: waveforms `[B, C, T]` (or `[B, T]`) of the same shape, float, in [-1, 1].
        mask: optional `[B, T]` (1/True = real sample, 0/False = padding): each clip is cut to its real
            samples (the real samples are the leading ones, as the feature extractor pads at the end; any
            padded sample is dropped wherever it sits).
        sampling_rate: the rate of both signals, in Hz.

    Returns:
        dict of float64 tensors `[B]` with keys `si_snr`, `stoi`, `pesq`, `mel_l1`.

    Raises:
        ImportError: without `pystoi` or `pesq` (`pip install "vq-tokenizer[audio]"`).
    """
    try:
        import pesq  # noqa: F401
        import pystoi
    except ImportError as error:
        raise ImportError(
            "speech_metrics_per_item needs the `pystoi` and `pesq` packages: "
            'pip install "vq-tokenizer[audio]" (or pip install pystoi pesq).'
        ) from error
    from transformers.audio_utils import mel_filter_bank

    _check_pair(estimate, reference, "speech_metrics_per_item")
    if estimate.dim() not in (2, 3):
        raise ValueError(
            f"speech_metrics_per_item needs waveforms [B, C, T] or [B, T], got {tuple(estimate.shape)}."
        )
    if not isinstance(sampling_rate, int) or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive int, got {sampling_rate!r}.")
    si_snr_values = si_snr_per_item(estimate, reference, mask)  # checks the mask
    estimate = estimate.detach().to(device="cpu", dtype=torch.float64)
    reference = reference.detach().to(device="cpu", dtype=torch.float64)
    if estimate.dim() == 3:
        estimate, reference = estimate.mean(dim=1), reference.mean(dim=1)  # [B, T] mono mix-down
    valid = None if mask is None else mask.detach().to("cpu").bool()

    mel_filters = torch.from_numpy(
        mel_filter_bank(
            num_frequency_bins=MEL_N_FFT // 2 + 1,
            num_mel_filters=MEL_NUM_BINS,
            min_frequency=0.0,
            max_frequency=sampling_rate / 2,
            sampling_rate=sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )
    )  # [freqs, mels], float64
    stoi_values, pesq_values, mel_values = [], [], []
    for index in range(estimate.shape[0]):
        est, ref = estimate[index], reference[index]
        if valid is not None:
            est, ref = est[valid[index]], ref[valid[index]]
        est_np, ref_np = est.numpy(), ref.numpy()
        stoi_values.append(float(pystoi.stoi(ref_np, est_np, sampling_rate, extended=False)))
        pesq_values.append(_pesq_or_nan(ref_np, est_np, sampling_rate))
        mel_values.append((_log_mel(est, mel_filters) - _log_mel(ref, mel_filters)).abs().mean().item())
    return {
        "si_snr": si_snr_values.cpu(),
        "stoi": torch.tensor(stoi_values, dtype=torch.float64),
        "pesq": torch.tensor(pesq_values, dtype=torch.float64),
        "mel_l1": torch.tensor(mel_values, dtype=torch.float64),
    }


# ------------------------------------------------------------------------------------------- codebook statistics


def code_counts(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code occurs.

    Args:
        codes: integer tensor of any shape (e.g. `[B, h, w]` or `[B, t]`) with values in `[0, codebook_size)`.
        codebook_size: K.

    Returns:
        int64 tensor `[K]` on the device of `codes`.
    """
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}.")
    flat = codes.reshape(-1).long()
    if flat.numel() and (flat.min() < 0 or flat.max() >= codebook_size):
        raise ValueError(
            f"codes must lie in [0, {codebook_size}), got values in [{flat.min().item()}, {flat.max().item()}]."
        )
    return torch.bincount(flat, minlength=codebook_size)


def codebook_usage(counts: torch.Tensor) -> float:
    """Share of the codebook used at least once.

    Args:
        counts: `[K]` occurrence counts (integer, or float, e.g. EMA cluster sizes).

    Returns:
        `float` in [0, 1]: `(counts > 0).sum() / K`.
    """
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D tensor [K], got shape {tuple(counts.shape)}.")
    return (counts > 0).double().mean().item()


def perplexity(counts: torch.Tensor) -> float:
    """Perplexity of the code distribution, `exp(-sum_k p_k log p_k)` with `p = counts / counts.sum()`.

    1 when a single code is used, K when all K codes are used equally often.

    Args:
        counts: `[K]` non-negative occurrence counts.

    Returns:
        `float` in [1, K]; 0.0 when no code was counted yet (all counts 0).
    """
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D tensor [K], got shape {tuple(counts.shape)}.")
    counts = counts.detach().to(torch.float64)
    if (counts < 0).any():
        raise ValueError("counts must be non-negative.")
    total = counts.sum()
    if total == 0:
        return 0.0
    probs = counts / total
    # xlogy gives 0 * log(0) = 0 for unused codes.
    entropy = -torch.special.xlogy(probs, probs).sum()
    return math.exp(entropy.item())


class CodebookStats:
    """Code counts accumulated over an eval set, with usage and perplexity over everything seen.

    Counts live on the device of the codes passed to `update` (no host sync per batch). To combine
    processes, sum `counts` across them (e.g. `stats.counts = accelerator.reduce(stats.counts, "sum")`)
    before reading `usage` / `perplexity`.

    Example:

    ```python
    stats = CodebookStats(codebook_size=512)
    for batch in loader:
        stats.update(model.encode(batch).codes)
    print(stats.usage, stats.perplexity)
    ```
    """

    def __init__(self, codebook_size: int) -> None:
        if not isinstance(codebook_size, int) or codebook_size < 1:
            raise ValueError(f"codebook_size must be a positive int, got {codebook_size!r}.")
        self.codebook_size = codebook_size
        self.counts: torch.Tensor = torch.zeros(codebook_size, dtype=torch.long)

    def update(self, codes: torch.Tensor) -> None:
        """Add the codes of one batch (integer tensor of any shape, values in `[0, codebook_size)`)."""
        batch_counts = code_counts(codes, self.codebook_size)
        self.counts = self.counts.to(batch_counts.device) + batch_counts

    def reset(self) -> None:
        """Forget every count."""
        self.counts = torch.zeros_like(self.counts)

    @property
    def usage(self) -> float:
        """Share of codes seen at least once (see `codebook_usage`)."""
        return codebook_usage(self.counts)

    @property
    def perplexity(self) -> float:
        """Perplexity of the codes seen (see `perplexity`); 0.0 before any update."""
        return perplexity(self.counts)

    def __repr__(self) -> str:
        return (
            f"CodebookStats(codebook_size={self.codebook_size}, total={int(self.counts.sum().item())}, "
            f"usage={self.usage:.4f}, perplexity={self.perplexity:.2f})"
        )
