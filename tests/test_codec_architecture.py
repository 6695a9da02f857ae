"""The codec architecture (`encoder_strides`): config checks, exact 1-D convolutions, shapes at any hop, the
mel loss, a save/load round trip and a short real training run on the offline speech corpus."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vq_tokenizer import VQVAEConfig, VQVAEModel
from vq_tokenizer.metrics import si_snr_per_item
from vq_tokenizer.modeling_vqvae import (
    VQVAECodecEncoder,
    VQVAEConv1d,
    VQVAEConvTranspose1d,
    multi_resolution_stft_loss,
    multi_scale_mel_loss,
    reconstruction_losses,
    waveform_correlation_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CODEC = dict(
    modality="audio",
    encoder_strides=[2, 4, 5],
    residual_dilations=[1, 3],
    hidden_size=4,
    codebook_dim=8,
    quantizer_type="rvq",
    num_quantizers=4,
    codebook_size=16,
    kmeans_iters=2,
    stft_fft_sizes=[64, 128],
    mel_loss_weight=1.0,
    mel_fft_sizes=[64, 128],
)


def codec_model(**overrides) -> VQVAEModel:
    torch.manual_seed(0)
    return VQVAEModel(VQVAEConfig(**{**CODEC, **overrides}))


def test_strides_set_the_hop_length_and_frame_rate():
    config = VQVAEConfig(**{**CODEC, "encoder_strides": [2, 4, 5, 8]})
    assert config.hop_length == config.downsampling_factor == 320
    assert config.frame_rate == 50.0
    assert config.uses_codec_architecture and config.num_downsampling_layers == 4
    assert config.residual_dilations == [1, 3]
    assert VQVAEConfig(modality="audio", encoder_strides=[4, 4]).residual_dilations == [1, 3, 9]
    assert not VQVAEConfig(modality="audio").uses_codec_architecture


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"modality": "image"}, "encoder_strides"),
        ({"encoder_strides": []}, "encoder_strides"),
        ({"encoder_strides": [1, 4]}, "encoder_strides"),
        ({"encoder_strides": "2,4"}, "encoder_strides"),
        ({"hop_length": 64}, "hop length"),
        ({"residual_dilations": [0]}, "residual_dilations"),
        ({"mel_loss_weight": -1.0}, "mel_loss_weight"),
        ({"reconstruction_loss_weight": -0.1}, "reconstruction_loss_weight"),
        ({"reconstruction_loss_weight": 0, "stft_loss_weight": 0, "mel_loss_weight": 0}, "nothing to learn"),
        ({"mel_fft_sizes": [32]}, "mel_fft_sizes"),
        ({"mel_loss_floor": 0.0}, "mel_loss_floor"),
        ({"stft_loss_floor": -1e-3}, "stft_loss_floor"),
        ({"stft_loss_floor": 2.0}, "stft_loss_floor"),
        ({"mel_fft_sizes": [100]}, "mel_fft_sizes"),
    ],
)
def test_bad_codec_options_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        VQVAEConfig(**{**CODEC, **overrides})


def test_dilations_without_strides_are_refused():
    with pytest.raises(ValueError, match="encoder_strides"):
        VQVAEConfig(modality="audio", residual_dilations=[1, 3])


def test_config_round_trip_keeps_the_codec_layout(tmp_path):
    config = VQVAEConfig(**CODEC)
    config.save_pretrained(tmp_path)
    loaded = VQVAEConfig.from_pretrained(tmp_path)
    assert loaded.encoder_strides == [2, 4, 5] and loaded.hop_length == 40
    assert loaded.mel_fft_sizes == [64, 128] and loaded.mel_loss_weight == 1.0


@pytest.mark.parametrize("stride, dilation", [(1, 9), (4, 1), (5, 1)])
def test_conv_wrappers_equal_torch_convolutions_and_their_gradients(stride, dilation):
    torch.manual_seed(0)
    ours = VQVAEConv1d(6, 4, 2 * stride if stride > 1 else 3, stride=stride, dilation=dilation, padding=dilation)
    reference = nn.Conv1d(6, 4, ours.kernel_size[0], stride=stride, dilation=dilation, padding=dilation)
    reference.load_state_dict(ours.state_dict())
    inputs = torch.randn(3, 6, 200, requires_grad=True)
    reference_inputs = inputs.detach().clone().requires_grad_(True)
    torch.testing.assert_close(ours(inputs), reference(reference_inputs), rtol=1e-5, atol=1e-5)
    ours(inputs).square().sum().backward()
    reference(reference_inputs).square().sum().backward()
    torch.testing.assert_close(inputs.grad, reference_inputs.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-4)

    up = VQVAEConvTranspose1d(4, 6, 2 * max(stride, 2), stride=max(stride, 2), padding=1, output_padding=1)
    up_reference = nn.ConvTranspose1d(4, 6, up.kernel_size[0], stride=up.stride[0], padding=1, output_padding=1)
    up_reference.load_state_dict(up.state_dict())
    small = torch.randn(2, 4, 30)
    torch.testing.assert_close(up(small), up_reference(small), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strides", [[2, 4, 5], [3, 2], [8]])
def test_any_strides_give_one_frame_per_hop_and_the_input_shape_back(strides):
    model = codec_model(encoder_strides=strides).eval()
    hop = model.config.hop_length
    inputs = torch.randn(2, 1, 7 * hop) * 0.1
    codes = model.encode(inputs).codes
    assert codes.shape == (2, 4, 7) and codes.dtype == torch.long
    for levels in range(1, 5):  # the first n levels decode, for every n
        assert model.decode(codes[:, :levels]).reconstruction.shape == inputs.shape
    assert model(inputs).reconstruction.shape == inputs.shape
    assert isinstance(model.encoder, VQVAECodecEncoder)


def test_a_fresh_codec_keeps_the_signal_scale():
    """PyTorch's default init through the residual stages: the untrained output stays on the input's scale
    (He-normal weights grew it ~2.5x a stage, so the first losses were in the thousands)."""
    model = codec_model(encoder_strides=[2, 4, 5, 8], hidden_size=8).eval()
    inputs = torch.randn(2, 1, 3200) * 0.1
    assert model(inputs).reconstruction.std() < 1.0


def test_mel_loss_is_zero_on_identity_grows_with_noise_and_ignores_padding():
    torch.manual_seed(0)
    clean = torch.randn(1, 1, 2048) * 0.1
    assert float(multi_scale_mel_loss(clean, clean, [256, 512], 16000)) == 0.0
    small = multi_scale_mel_loss(clean + 0.01 * torch.randn_like(clean), clean, [256, 512], 16000)
    large = multi_scale_mel_loss(clean + 0.1 * torch.randn_like(clean), clean, [256, 512], 16000)
    assert 0 < float(small) < float(large)
    noisy = clean + 0.05 * torch.randn_like(clean)
    alone = multi_scale_mel_loss(noisy, clean, [256, 512], 16000)
    padded = torch.nn.functional.pad(noisy, (0, 1000), value=0.7)
    mask = torch.zeros(1, padded.shape[-1])
    mask[:, :2048] = 1
    in_batch = multi_scale_mel_loss(padded, torch.nn.functional.pad(clean, (0, 1000)), [256, 512], 16000, mask)
    torch.testing.assert_close(alone, in_batch)


def test_reconstruction_losses_names_each_term_and_weights_their_sum():
    """The one objective our model and the benchmark's peer train on: each term as its own function computes
    it (padding cut), only the weighted terms present, the model's loss the same function with its config."""
    torch.manual_seed(0)
    target = torch.randn(2, 1, 1600) * 0.1
    reconstruction = target + 0.05 * torch.randn_like(target)
    mask = torch.ones(2, 1600)
    mask[1, 1200:] = 0
    terms = reconstruction_losses(
        reconstruction,
        target,
        mask,
        waveform_weight=0.1,
        stft_weight=0.3,
        stft_fft_sizes=[256, 512],
        stft_floor=1e-3,
        mel_weight=2.0,
        mel_fft_sizes=[256],
        sampling_rate=16000,
        mel_floor=1e-4,
    )
    assert set(terms) == {"waveform", "stft", "mel", "loss"}
    real = mask.bool()
    expected_l1 = torch.cat([(reconstruction - target)[i, 0][real[i]].abs() for i in range(2)]).mean()
    torch.testing.assert_close(terms["waveform"], expected_l1)
    torch.testing.assert_close(terms["stft"], multi_resolution_stft_loss(reconstruction, target, [256, 512], mask, 1e-3))
    torch.testing.assert_close(terms["mel"], multi_scale_mel_loss(reconstruction, target, [256], 16000, mask, None, 1e-4))
    torch.testing.assert_close(terms["loss"], 0.1 * terms["waveform"] + 0.3 * terms["stft"] + 2.0 * terms["mel"])
    mse = reconstruction_losses(reconstruction, target, waveform_loss="mse")
    assert set(mse) == {"waveform", "loss"}
    torch.testing.assert_close(mse["loss"], (reconstruction - target).pow(2).mean())
    with pytest.raises(ValueError, match="sampling_rate"):
        reconstruction_losses(reconstruction, target, mel_weight=1.0, mel_fft_sizes=[256])
    model = codec_model(stft_fft_sizes=[256, 512], mel_fft_sizes=[256], stft_loss_floor=1e-3, mel_loss_floor=1e-4)
    config = model.config
    torch.testing.assert_close(
        model.reconstruction_loss(reconstruction, target, mask),
        reconstruction_losses(
            reconstruction,
            target,
            mask,
            waveform_weight=config.reconstruction_loss_weight,
            stft_weight=config.stft_loss_weight,
            stft_fft_sizes=[256, 512],
            stft_floor=1e-3,
            mel_weight=config.mel_loss_weight,
            mel_fft_sizes=[256],
            sampling_rate=config.sampling_rate,
            mel_floor=1e-4,
        )["loss"],
    )


def test_reconstruction_loss_weight_scales_the_waveform_term_only(tmp_path):
    """EnCodec's time-domain weight: the L1 term is scaled, the spectral terms are not, and the weight is saved."""
    torch.manual_seed(0)
    target = torch.randn(2, 1, 800) * 0.1
    reconstruction = target + 0.05 * torch.randn_like(target)
    mask = torch.ones(2, 800)
    mask[1, 600:] = 0
    full, waveform_only, spectral_only = (
        codec_model(**weights).reconstruction_loss(reconstruction, target, mask)
        for weights in ({}, {"stft_loss_weight": 0.0, "mel_loss_weight": 0.0}, {"reconstruction_loss_weight": 0.0})
    )
    tenth = codec_model(reconstruction_loss_weight=0.1)
    scaled = tenth.reconstruction_loss(reconstruction, target, mask)
    torch.testing.assert_close(scaled, 0.1 * waveform_only + spectral_only)
    torch.testing.assert_close(full, waveform_only + spectral_only)
    tenth.config.save_pretrained(tmp_path)
    assert VQVAEConfig.from_pretrained(tmp_path).reconstruction_loss_weight == 0.1
    assert VQVAEConfig(modality="image", reconstruction_loss_weight=0.5).reconstruction_loss_weight == 0.5
    with pytest.raises(ValueError, match="nothing to learn"):
        VQVAEConfig(modality="image", reconstruction_loss_weight=0.0)


def test_spectral_loss_floors_silence_noise_below_them(tmp_path):
    """Noise far below a floor costs nothing in that spectral loss, noise above it still does; the default
    floors (1e-7 STFT, 1e-5 mel) are the old behaviour, and the floors are saved with the config."""
    torch.manual_seed(0)
    speech = torch.randn(1, 1, 4096) * 0.1
    speech[..., 2048:] = 0  # silence in the second half
    hiss = speech.clone()
    hiss[..., 2048:] = 1e-6 * torch.randn(2048)
    loud = speech.clone()
    loud[..., 2048:] = 0.05 * torch.randn(2048)
    mask = torch.ones(1, 4096)
    for floors in ({}, {"stft_loss_floor": 1e-2, "mel_loss_floor": 1e-2}):
        model = codec_model(reconstruction_loss_weight=0.0, **floors)
        assert float(model.reconstruction_loss(speech, speech, mask)) == 0.0
        quiet, noisy = (float(model.reconstruction_loss(x, speech, mask)) for x in (hiss, loud))
        if floors:
            assert quiet < 1e-3 < noisy
        else:
            assert quiet > 1.0 and noisy > quiet  # the low default floors count the inaudible hiss
    defaults = VQVAEConfig(**CODEC)
    assert (defaults.stft_loss_floor, defaults.mel_loss_floor) == (1e-7, 1e-5)
    model.config.save_pretrained(tmp_path)
    loaded = VQVAEConfig.from_pretrained(tmp_path)
    assert (loaded.stft_loss_floor, loaded.mel_loss_floor) == (1e-2, 1e-2)


def test_correlation_loss_tracks_si_snr_and_asks_for_the_waveform_not_its_spectrum(tmp_path):
    """1 - cosine of the zero-mean waveforms over real samples: 0 for a copy at any gain and offset, 2 for the
    inverted copy, its rho giving back the SI-SNR the metrics report; a phase-scrambled copy has the target's
    magnitudes (STFT loss near 0) yet costs ~1 here; a step down its gradient raises SI-SNR; the weight is
    checked, saved and adds only this term; alone it is enough to learn from."""
    torch.manual_seed(0)
    target = torch.randn(3, 1, 4000) * 0.1
    mask = torch.ones(3, 4000)
    mask[1, 3000:] = 0
    copy = 2.0 * target + 0.5
    copy[1, :, 3000:] = 10.0  # padding does not count
    assert float(waveform_correlation_loss(copy, target, mask)) < 1e-6
    assert abs(float(waveform_correlation_loss(-target, target)) - 2.0) < 1e-6
    noisy = target + 0.05 * torch.randn_like(target)
    rho = 1 - waveform_correlation_loss(noisy, target, mask).double()
    from_rho = 10 * torch.log10(rho**2 / (1 - rho**2))
    torch.testing.assert_close(from_rho, si_snr_per_item(noisy, target, mask).mean(), rtol=0, atol=0.1)

    spectrum = torch.fft.rfft(target)
    scrambled = torch.fft.irfft(spectrum.abs() * torch.exp(2j * torch.pi * torch.rand(spectrum.shape)), n=4000)
    assert float(multi_resolution_stft_loss(scrambled, target, [4096])) < 0.05  # the same magnitudes...
    assert float(waveform_correlation_loss(scrambled, target)) > 0.8  # ...and not the waveform

    guess = (0.3 * target + 0.1 * torch.randn_like(target)).requires_grad_()
    waveform_correlation_loss(guess, target).backward()
    stepped = guess.detach() - 0.2 * guess.detach().norm() * guess.grad / guess.grad.norm()
    assert si_snr_per_item(stepped, target).mean() > si_snr_per_item(guess.detach(), target).mean() + 1.0
    assert torch.isfinite(waveform_correlation_loss(torch.zeros_like(target), target))

    without, with_term = (codec_model(correlation_loss_weight=weight) for weight in (0.0, 0.5))
    torch.testing.assert_close(
        with_term.reconstruction_loss(noisy, target, mask),
        without.reconstruction_loss(noisy, target, mask) + 0.5 * waveform_correlation_loss(noisy, target, mask),
    )
    with_term.config.save_pretrained(tmp_path)
    assert VQVAEConfig.from_pretrained(tmp_path).correlation_loss_weight == 0.5
    with pytest.raises(ValueError, match="correlation_loss_weight"):
        VQVAEConfig(**CODEC, correlation_loss_weight=-1.0)
    only = {"reconstruction_loss_weight": 0.0, "stft_loss_weight": 0.0, "mel_loss_weight": 0.0}
    assert VQVAEConfig(**{**CODEC, **only}, correlation_loss_weight=1.0).correlation_loss_weight == 1.0
    with pytest.raises(ValueError, match="nothing to learn"):
        VQVAEConfig(**{**CODEC, **only})


def test_save_and_load_give_the_same_codes(tmp_path):
    model = codec_model().eval()
    inputs = torch.randn(1, 1, 400) * 0.1
    model.save_pretrained(tmp_path)
    loaded = VQVAEModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.encoder, VQVAECodecEncoder)
    assert torch.equal(model.encode(inputs).codes, loaded.encode(inputs).codes)


def test_codec_learns_real_speech(tmp_path):
    """A few dozen steps on real clips of the offline corpus lower the loss and the spectral error."""
    from vq_tokenizer.data import load_speech_corpus

    corpus = load_speech_corpus(num_train=8, num_test=2, cache_dir=tmp_path)
    clips = [np.asarray(clip, dtype=np.float32) for clip in corpus["train"]["audio"]]
    model = codec_model(hidden_size=8, quantizer_dropout=0.5)
    hop = model.config.hop_length
    crop = 40 * hop
    # The middle of each clip: speech, not the leading silence.
    middles = [np.pad(c, (0, max(0, crop - len(c))))[max(0, (len(c) - crop) // 2) :][:crop] for c in clips]
    batch = torch.stack([torch.from_numpy(middle) for middle in middles])[:, None]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        output = model(batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(output.reconstruction_loss.detach()))
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
