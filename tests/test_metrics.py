"""Metrics against their definitions, skimage's SSIM and known cases."""

import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import structural_similarity
from skimage.util import img_as_float64

from vq_tokenizer.metrics import (
    CodebookStats,
    code_counts,
    codebook_usage,
    mse,
    mse_per_image,
    perplexity,
    psnr,
    psnr_per_image,
    si_snr,
    si_snr_per_item,
    speech_metrics_per_item,
    ssim,
    ssim_per_image,
)

# ----------------------------------------------------------------------------------------------- helpers


def to_bchw(images: list[np.ndarray]) -> torch.Tensor:
    """HW or HWC float arrays -> [B, C, H, W] float32 tensor."""
    arrays = [image[..., None] if image.ndim == 2 else image for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a.astype(np.float64),
        b.astype(np.float64),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1,
        channel_axis=-1 if a.ndim == 3 else None,
    )


def distort(image: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Noise plus a crude blur, kept in [0, 1], in float32 like a model's output."""
    blurred = (image + np.roll(image, 1, axis=0) + np.roll(image, 1, axis=1)) / 3
    return np.clip(blurred + rng.normal(0, noise, image.shape), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return img_as_float64(data.camera())


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return img_as_float64(data.astronaut())


# ---------------------------------------------------------------------------------------------- MSE, PSNR


def test_mse_matches_definition(camera):
    rng = np.random.default_rng(0)
    x = np.stack([camera[:64, :64], camera[100:164, 200:264]])[:, None]
    y = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1)
    expected = ((x - y) ** 2).reshape(2, -1).mean(axis=1)
    per_image = mse_per_image(torch.from_numpy(x), torch.from_numpy(y))
    assert per_image.shape == (2,)
    np.testing.assert_allclose(per_image.numpy(), expected, rtol=1e-12)
    assert mse(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected.mean(), rel=1e-12)


def test_psnr_per_image_and_mean(camera):
    rng = np.random.default_rng(1)
    x = np.stack([camera[:64, :64], camera[200:264, 200:264], camera[300:364, 0:64]])[:, None]
    y = x + rng.normal(0, 1, x.shape) * np.array([0.01, 0.05, 0.2])[:, None, None, None]
    expected = 10 * np.log10(1.0 / ((x - y) ** 2).reshape(3, -1).mean(axis=1))
    per_image = psnr_per_image(torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_allclose(per_image.numpy(), expected, rtol=1e-10)
    # The mean of per-image PSNR, which differs from the PSNR of the mean MSE.
    assert psnr(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected.mean(), rel=1e-10)
    assert expected.mean() != pytest.approx(10 * np.log10(1.0 / ((x - y) ** 2).mean()), rel=1e-3)


def test_psnr_data_range_and_known_value():
    x = torch.zeros(1, 1, 8, 8)
    y = torch.full((1, 1, 8, 8), 0.1)  # MSE 0.01 -> 20 dB at range 1, 20 + 20 log10(255) at range 255
    assert psnr(x, y) == pytest.approx(20.0, abs=1e-5)
    assert psnr(x * 255, y * 255, data_range=255) == pytest.approx(20.0, abs=1e-4)
    assert psnr(x, y, data_range=2.0) == pytest.approx(20.0 + 20 * math.log10(2), abs=1e-5)


def test_psnr_identical_images_is_inf():
    x = torch.rand(2, 3, 16, 16)
    y = x.clone()
    y[1] += 0.1
    per_image = psnr_per_image(x, y)
    assert math.isinf(per_image[0].item()) and per_image[0] > 0
    assert math.isfinite(per_image[1].item())
    assert psnr(x, x) == float("inf")


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        mse(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="data_range"):
        psnr(torch.zeros(1, 4), torch.ones(1, 4), data_range=0)


# -------------------------------------------------------------------------------------------------------- SSIM


def test_ssim_matches_skimage_grayscale(camera):
    rng = np.random.default_rng(2)
    crops = [camera[:128, :128], camera[150:278, 300:428], camera[384:512, 0:128]]
    distorted = [distort(crop, rng, noise) for crop, noise in zip(crops, [0.02, 0.1, 0.3], strict=True)]
    expected = [skimage_ssim(a, b) for a, b in zip(crops, distorted, strict=True)]
    got = ssim_per_image(to_bchw(crops), to_bchw(distorted))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)
    assert ssim(to_bchw(crops), to_bchw(distorted)) == pytest.approx(np.mean(expected), abs=1e-4)
    assert len(set(np.round(expected, 2))) == 3  # the cases really differ


def test_ssim_matches_skimage_colour_and_gray_astronaut(astronaut):
    rng = np.random.default_rng(3)
    crops = [astronaut[:96, :128], astronaut[200:296, 150:278]]
    distorted = [distort(crop, rng, 0.05) for crop in crops]
    expected = [skimage_ssim(a, b) for a, b in zip(crops, distorted, strict=True)]
    np.testing.assert_allclose(
        ssim_per_image(to_bchw(crops), to_bchw(distorted)).numpy(), expected, atol=1e-4
    )

    gray = [crop.mean(axis=-1) for crop in crops]
    gray_distorted = [distort(crop, rng, 0.05) for crop in gray]
    expected = [skimage_ssim(a, b) for a, b in zip(gray, gray_distorted, strict=True)]
    np.testing.assert_allclose(
        ssim_per_image(to_bchw(gray), to_bchw(gray_distorted)).numpy(), expected, atol=1e-4
    )


def test_ssim_matches_skimage_on_fashion_mnist_sized_crops(camera, astronaut):
    rng = np.random.default_rng(4)
    sources = [camera, astronaut.mean(axis=-1)]
    crops = []
    for index in range(16):
        source = sources[index % 2]
        top, left = rng.integers(0, source.shape[0] - 28), rng.integers(0, source.shape[1] - 28)
        crops.append(source[top : top + 28, left : left + 28])
    distorted = [distort(crop, rng, 0.1) for crop in crops]
    expected = [skimage_ssim(a, b) for a, b in zip(crops, distorted, strict=True)]
    np.testing.assert_allclose(
        ssim_per_image(to_bchw(crops), to_bchw(distorted)).numpy(), expected, atol=1e-4
    )


def test_ssim_identical_and_constant_images(camera):
    x = to_bchw([camera[:32, :32]])
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)

    constant = torch.full((1, 1, 16, 16), 0.3)
    assert ssim(constant, constant) == pytest.approx(1.0, abs=1e-12)
    other = torch.full((1, 1, 16, 16), 0.7)
    # Zero variances leave only the luminance term: (2ab + C1) / (a^2 + b^2 + C1).
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * 0.3 * 0.7 + c1) / (0.3**2 + 0.7**2 + c1)
    assert ssim(constant, other) == pytest.approx(expected, abs=1e-6)
    assert ssim(constant, other) == pytest.approx(
        skimage_ssim(constant[0, 0].numpy(), other[0, 0].numpy()), abs=1e-6
    )


def test_ssim_rejects_small_or_unbatched_images():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 10, 32), torch.zeros(1, 1, 10, 32))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        ssim(torch.zeros(1, 32, 32), torch.zeros(1, 32, 32))


# ------------------------------------------------------------------------------------------------------ SI-SNR


def si_snr_numpy(estimate: np.ndarray, reference: np.ndarray) -> float:
    """The textbook definition, one 1-D signal, float64, no epsilon."""
    estimate = estimate.astype(np.float64) - estimate.mean()
    reference = reference.astype(np.float64) - reference.mean()
    target = np.dot(estimate, reference) / np.dot(reference, reference) * reference
    noise = estimate - target
    return 10 * np.log10(np.dot(target, target) / np.dot(noise, noise))


def test_si_snr_matches_definition():
    rng = np.random.default_rng(5)
    reference = rng.normal(size=(4, 2000)) + 0.3  # a DC offset the definition removes
    estimate = 0.7 * reference + rng.normal(size=(4, 2000)) * np.array([0.01, 0.1, 1.0, 3.0])[:, None]
    expected = [si_snr_numpy(e, r) for e, r in zip(estimate, reference, strict=True)]
    got = si_snr_per_item(torch.from_numpy(estimate).float(), torch.from_numpy(reference).float())
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-3)
    assert si_snr(torch.from_numpy(estimate), torch.from_numpy(reference)) == pytest.approx(
        np.mean(expected), abs=1e-9
    )


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 30.0])
def test_si_snr_known_snr(snr_db):
    rng = np.random.default_rng(6)
    t = np.arange(16000) / 16000
    reference = np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 330 * t)
    noise = rng.normal(size=t.shape)
    noise -= noise.mean()
    noise -= np.dot(noise, reference) / np.dot(reference, reference) * reference  # orthogonal to reference
    noise *= np.sqrt(np.dot(reference, reference) / np.dot(noise, noise) / 10 ** (snr_db / 10))
    estimate = 3.0 * (reference + noise)  # the scale must not matter
    got = si_snr(torch.from_numpy(estimate)[None].float(), torch.from_numpy(reference)[None].float())
    assert got == pytest.approx(snr_db, abs=0.1)


def test_si_snr_scaled_copy_is_very_high():
    reference = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
    assert si_snr(0.5 * reference, reference) > 100
    assert si_snr(reference + 1.0, reference) > 100  # offsets are removed too


def test_si_snr_mask_ignores_padding_and_handles_channels():
    rng = np.random.default_rng(7)
    lengths = [3000, 1800]
    reference = rng.normal(size=(2, 2, 3000))
    estimate = reference + 0.2 * rng.normal(size=(2, 2, 3000))
    estimate[1, :, 1800:] = 100.0  # garbage in the padding
    mask = np.zeros((2, 3000), dtype=bool)
    for index, length in enumerate(lengths):
        mask[index, :length] = True
    expected = [
        np.mean([si_snr_numpy(estimate[b, c, :length], reference[b, c, :length]) for c in range(2)])
        for b, length in enumerate(lengths)
    ]
    got = si_snr_per_item(torch.from_numpy(estimate), torch.from_numpy(reference), torch.from_numpy(mask))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9)

    with pytest.raises(ValueError, match="mask must have shape"):
        si_snr(torch.zeros(2, 10), torch.zeros(2, 10), mask=torch.ones(2, 11))
    with pytest.raises(ValueError, match="no valid sample"):
        si_snr(torch.ones(1, 10), torch.ones(1, 10), mask=torch.zeros(1, 10))


# --------------------------------------------------------------------------------------- codebook statistics


def test_code_counts_and_usage():
    codes = torch.tensor([[0, 0, 3], [3, 3, 7]])
    counts = code_counts(codes, codebook_size=8)
    assert counts.tolist() == [2, 0, 0, 3, 0, 0, 0, 1]
    assert codebook_usage(counts) == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        code_counts(torch.tensor([8]), codebook_size=8)
    with pytest.raises(ValueError, match="integer"):
        code_counts(torch.tensor([1.0]), codebook_size=8)


def test_perplexity_definition_and_edge_cases():
    assert perplexity(torch.tensor([0, 10, 0, 0])) == pytest.approx(1.0)
    assert perplexity(torch.full((16,), 5)) == pytest.approx(16.0)
    counts = torch.tensor([1.0, 2.0, 3.0, 0.0, 4.0], dtype=torch.float64)
    probs = counts[counts > 0] / counts.sum()
    assert perplexity(counts) == pytest.approx(math.exp(-(probs * probs.log()).sum().item()), rel=1e-12)
    assert perplexity(torch.zeros(4, dtype=torch.long)) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        perplexity(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="1-D"):
        codebook_usage(torch.zeros(2, 2))


def test_codebook_stats_accumulates_over_batches():
    stats = CodebookStats(codebook_size=4)
    assert stats.usage == 0.0 and stats.perplexity == 0.0
    stats.update(torch.tensor([[0, 0], [0, 0]]))
    assert stats.perplexity == pytest.approx(1.0) and stats.usage == pytest.approx(0.25)
    stats.update(torch.tensor([1, 2, 3, 1, 2, 3, 1, 2, 3, 0, 0, 0]))  # now 7, 3, 3, 3
    assert stats.counts.tolist() == [7, 3, 3, 3]
    assert stats.usage == 1.0
    assert stats.perplexity == pytest.approx(perplexity(torch.tensor([7, 3, 3, 3])))

    # Counts from two "processes" sum to the counts of the whole set.
    other = CodebookStats(codebook_size=4)
    other.update(torch.tensor([1, 2, 3, 0]))
    combined = CodebookStats(codebook_size=4)
    combined.counts = stats.counts + other.counts
    assert combined.counts.tolist() == [8, 4, 4, 4]
    assert combined.perplexity == pytest.approx(perplexity(torch.tensor([2.0, 1.0, 1.0, 1.0])))

    stats.reset()
    assert stats.counts.tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="positive int"):
        CodebookStats(0)


# ---------------------------------------------------------------------------------------------- speech metrics


@pytest.fixture(scope="module")
def speech_test_split():
    """The offline corpus' test split: 2 held-out synthetic voices plus ALSA's recordings and noise clip."""
    from vq_tokenizer.speech_corpus import build_speech_corpus

    return build_speech_corpus(None, num_train=1, num_test=2, seed=0, num_workers=1)["test"].with_format(
        "numpy"
    )


def _clip(split, index: int = 0) -> torch.Tensor:
    return torch.from_numpy(split[index]["audio"]).float()


def test_speech_metrics_identical_signals(speech_test_split):
    clips = [_clip(speech_test_split, 0), _clip(speech_test_split, 1)]
    length = min(len(c) for c in clips)
    batch = torch.stack([c[:length] for c in clips]).unsqueeze(1)  # [2, 1, T]
    values = speech_metrics_per_item(batch, batch.clone())
    assert set(values) == {"si_snr", "stoi", "pesq", "mel_l1"}
    for value in values.values():
        assert value.shape == (2,) and value.dtype == torch.float64
    assert (values["stoi"] > 0.999).all()
    assert (values["pesq"] > 4.5).all()
    assert (values["mel_l1"] == 0).all()
    assert (values["si_snr"] > 100).all()


def test_speech_metrics_fall_monotonically_with_noise(speech_test_split):
    clip = _clip(speech_test_split, 0)
    noise = torch.randn(clip.shape, generator=torch.Generator().manual_seed(0))
    rms = clip.pow(2).mean().sqrt()
    levels = (0.0, 0.03, 0.1, 0.3, 1.0)
    estimate = torch.stack([clip + level * rms * noise for level in levels]).unsqueeze(1)
    reference = clip.expand(len(levels), -1).unsqueeze(1).clone()
    values = speech_metrics_per_item(estimate, reference)
    for name in ("si_snr", "stoi", "pesq"):
        assert (values[name].diff() < 0).all(), (name, values[name])
    assert (values["mel_l1"].diff() > 0).all(), values["mel_l1"]
    assert 9 < values["si_snr"][3] < 12  # noise at 0.3 x the clip's RMS: about 10.5 dB


def test_speech_metrics_mask_ignores_padding(speech_test_split):
    short, long = _clip(speech_test_split, 0), _clip(speech_test_split, 1)
    if len(short) > len(long):
        short, long = long, short
    generator = torch.Generator().manual_seed(1)
    degrade = lambda x: x + 0.05 * torch.randn(x.shape, generator=generator)  # noqa: E731
    short_estimate = degrade(short)
    alone = speech_metrics_per_item(short_estimate[None, None], short[None, None])

    # In a batch with a longer clip, padded with different junk in estimate and reference.
    pad = len(long) - len(short)
    estimate = torch.stack([torch.cat([short_estimate, torch.rand(pad)]), degrade(long)]).unsqueeze(1)
    reference = torch.stack([torch.cat([short, -torch.rand(pad)]), long]).unsqueeze(1)
    mask = torch.ones(2, len(long), dtype=torch.long)
    mask[0, len(short) :] = 0
    batched = speech_metrics_per_item(estimate, reference, mask)
    for name, value in alone.items():
        assert batched[name][0].item() == pytest.approx(value.item(), rel=1e-6, abs=1e-9), name
    unmasked = speech_metrics_per_item(estimate, reference)
    assert unmasked["mel_l1"][0] != pytest.approx(alone["mel_l1"].item(), rel=1e-3)


def test_speech_metrics_multichannel_is_the_channel_mean(speech_test_split):
    clip = _clip(speech_test_split, 0)
    estimate = clip + 0.05 * torch.randn(clip.shape, generator=torch.Generator().manual_seed(2))
    mono = speech_metrics_per_item(estimate[None, None], clip[None, None])
    stereo = speech_metrics_per_item(torch.stack([estimate, estimate])[None], torch.stack([clip, clip])[None])
    for name in mono:
        assert stereo[name].item() == pytest.approx(mono[name].item(), rel=1e-6), name
    no_channel = speech_metrics_per_item(estimate[None], clip[None])
    assert no_channel["pesq"].item() == pytest.approx(mono["pesq"].item(), rel=1e-9)


def test_speech_metrics_other_rate_resamples_for_pesq(speech_test_split):
    from vq_tokenizer.media_io import resample

    clip = resample(speech_test_split[0]["audio"], 16000, 8000)
    clip = torch.from_numpy(np.ascontiguousarray(clip)).float()[None, None]
    values = speech_metrics_per_item(clip, clip.clone(), sampling_rate=8000)
    assert values["pesq"].item() > 4.5 and values["stoi"].item() > 0.999


def test_pesq_nan_on_silence_and_short_clips_not_a_crash(speech_test_split):
    silence = torch.zeros(1, 1, 16000)
    values = speech_metrics_per_item(silence, silence.clone())
    assert math.isnan(values["pesq"].item())
    assert values["mel_l1"].item() == 0.0 and math.isfinite(values["stoi"].item())

    clip = _clip(speech_test_split, 0)[None, None]
    short = speech_metrics_per_item(clip[..., :2000], clip[..., :2000].clone())  # 1/8 s: too short
    assert math.isnan(short["pesq"].item())

    # Pink noise (ALSA's Noise.wav): PESQ is scored or NaN, never an error; the other metrics are finite.
    sources = list(speech_test_split["source"])
    noise = _clip(speech_test_split, sources.index("alsa:Noise.wav"))
    noisy = speech_metrics_per_item(
        noise[None, None] + 0.01 * torch.randn(1, 1, len(noise), generator=torch.Generator().manual_seed(3)),
        noise[None, None],
    )
    assert all(math.isfinite(noisy[name].item()) for name in ("si_snr", "stoi", "mel_l1"))
    batch = speech_metrics_per_item(torch.cat([silence, silence]), torch.cat([silence, silence]))
    assert torch.isnan(batch["pesq"]).all()
