"""VQ-VAE tokenizer model (van den Oord et al. 2017, https://arxiv.org/abs/1711.00937).

Self-contained on purpose: it imports only torch, transformers (with safetensors, which transformers
requires), the configuration and the quantizers (`quantization_vqvae.py`), so that `register_for_auto_class` can ship it to the Hub and
`trust_remote_code=True` loads it where `vq_tokenizer` is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, ModelOutput, has_file, logging

from .configuration_vqvae import VQVAEConfig
from .quantization_vqvae import (
    VQVAEFiniteScalarQuantizer,
    VQVAEGumbelQuantizer,
    VQVAEQuantizerBase,
    VQVAEQuantizerOutput,
    VQVAEResidualVectorQuantizer,
    VQVAEVectorQuantizer,
    build_quantizer,
    nearest_codes,
    parallel_nearest_codes,
)

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------
# Outputs


@dataclass
class VQVAEEncoderOutput(ModelOutput):
    """
    Output of [`VQVAEModel.encode`].

    Args:
        codes (`torch.LongTensor` of shape `[B, h, w]` (images) or `[B, t]` (audio); `[B, Q, h, w]` / `[B, Q, t]` with `quantizer_type="rvq"`):
            The discrete tokens.
        latents (`torch.FloatTensor` of shape `[B, D, h, w]` or `[B, D, t]`):
            Encoder outputs before quantization (z_e).
        quantized (`torch.FloatTensor` of shape `[B, D, h, w]` or `[B, D, t]`):
            Codebook vectors of the codes (z_q).
    """

    codes: torch.LongTensor | None = None
    latents: torch.FloatTensor | None = None
    quantized: torch.FloatTensor | None = None


@dataclass
class VQVAEDecoderOutput(ModelOutput):
    """
    Output of [`VQVAEModel.decode`].

    Args:
        reconstruction (`torch.FloatTensor` of shape `[B, C, H, W]` or `[B, C, T]`):
            The decoded input, in the model's input scale (e.g. [-1, 1] for the default processor).
    """

    reconstruction: torch.FloatTensor | None = None


@dataclass
class VQVAEOutput(ModelOutput):
    """
    Output of [`VQVAEModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            reconstruction_loss + commitment_cost * commitment_loss + codebook_loss.
        reconstruction (`torch.FloatTensor` of shape `[B, C, H, W]` or `[B, C, T]`):
            Decoded input.
        codes (`torch.LongTensor` of shape `[B, h, w]` or `[B, t]`; `[B, Q, h, w]` / `[B, Q, t]` with `quantizer_type="rvq"`):
            The discrete tokens.
        reconstruction_loss (`torch.FloatTensor` of shape `()`):
            MSE or L1 to the input (plus the multi-resolution STFT loss for audio), padding excluded.
        commitment_loss (`torch.FloatTensor` of shape `()`):
            `||z_e - sg[e]||^2`, before the commitment cost.
        codebook_loss (`torch.FloatTensor` of shape `()`):
            `||sg[z_e] - e||^2` (zero with EMA updates).
        perplexity (`torch.FloatTensor` of shape `()`):
            exp(entropy) of the batch's code distribution.
        codebook_usage (`torch.FloatTensor` of shape `()`):
            Share of codes used in the batch.
        extra_loss (`torch.FloatTensor` of shape `()`):
            The quantizer's own term, already weighted and in `loss` (Gumbel's KL; zero for the other types).
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    codes: torch.LongTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    codebook_usage: torch.FloatTensor | None = None
    extra_loss: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------
# Encoder and decoder


def _conv(config: VQVAEConfig) -> type[nn.Module]:
    return getattr(nn, f"Conv{config.spatial_dims}d")


def _conv_transpose(config: VQVAEConfig) -> type[nn.Module]:
    return getattr(nn, f"ConvTranspose{config.spatial_dims}d")


class VQVAEResidualBlock(nn.Module):
    """ReLU, 3x3 conv, ReLU, 1x1 conv, added to the input."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        conv = _conv(config)
        self.conv1 = conv(config.hidden_size, config.residual_hidden_size, 3, padding=1)
        self.conv2 = conv(config.residual_hidden_size, config.hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.conv2(F.relu(self.conv1(F.relu(hidden))))


class VQVAEResidualStack(nn.Module):
    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.layers = nn.ModuleList([VQVAEResidualBlock(config) for _ in range(config.num_residual_layers)])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden)
        return F.relu(hidden)


def _stage_widths(config: VQVAEConfig) -> list[int]:
    """Widths after each strided stage: the last is hidden_size, earlier ones half of it."""
    stages = config.num_downsampling_layers
    return [max(1, config.hidden_size // 2)] * (stages - 1) + [config.hidden_size] if stages else []


class VQVAEEncoder(GradientCheckpointingLayer):
    """Strided 4x4 convolutions (stride 2) to the downsampling factor, a 3x3 conv, residual blocks,
    then a 1x1 conv to the code dimension D.

    With activation checkpointing on (`model.activation_checkpointing_enable()`,
    `TrainingArguments(gradient_checkpointing=True)`) a training forward keeps only its input and recomputes
    the rest in the backward pass."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        conv = _conv(config)
        widths = _stage_widths(config)
        self.downsample = nn.ModuleList()
        channels = config.in_channels
        for width in widths:
            self.downsample.append(conv(channels, width, 4, stride=2, padding=1))
            channels = width
        self.conv_in = conv(channels, config.hidden_size, 3, padding=1)
        self.residual = VQVAEResidualStack(config)
        self.conv_out = conv(config.hidden_size, config.codebook_dim, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = inputs
        for layer in self.downsample:
            hidden = F.relu(layer(hidden))
        return self.conv_out(self.residual(self.conv_in(hidden)))


class VQVAEDecoder(GradientCheckpointingLayer):
    """Mirror of the encoder: 3x3 conv from D, residual blocks, transposed 4x4 convolutions (stride 2).
    Checkpointed like the encoder. (The quantizer between them never is: its EMA updates run once a step.)"""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        conv, conv_transpose = _conv(config), _conv_transpose(config)
        self.conv_in = conv(config.codebook_dim, config.hidden_size, 3, padding=1)
        self.residual = VQVAEResidualStack(config)
        stage_widths = _stage_widths(config)
        widths = list(reversed(stage_widths))[1:] + [config.in_channels] if stage_widths else []
        self.upsample = nn.ModuleList()
        channels = config.hidden_size
        for width in widths:
            self.upsample.append(conv_transpose(channels, width, 4, stride=2, padding=1))
            channels = width
        self.conv_out = conv(config.hidden_size, config.in_channels, 3, padding=1) if not widths else None

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        hidden = self.residual(self.conv_in(quantized))
        for index, layer in enumerate(self.upsample):
            hidden = layer(hidden)
            if index < len(self.upsample) - 1:
                hidden = F.relu(hidden)
        if self.conv_out is not None:
            hidden = self.conv_out(hidden)
        return hidden


class VQVAEConv1d(nn.Conv1d):
    """`nn.Conv1d` (same weights, same results) computed on CPU as a 2-D convolution over a height-1,
    channels-last image, which oneDNN runs 1.3-3.4x faster than its 1-D kernel for the codec's layers (measured
    on a 2-core Xeon, forward + backward). The output stays channels-last in memory, so the next layer's view
    needs no copy."""

    def _conv_forward(self, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        if inputs.device.type != "cpu" or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(inputs, weight, bias)
        image = inputs.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        output = F.conv2d(
            image,
            weight.unsqueeze(2),
            bias,
            (1, self.stride[0]),
            (0, self.padding[0]),
            (1, self.dilation[0]),
            self.groups,
        )
        return output.squeeze(2)


class VQVAEConvTranspose1d(nn.ConvTranspose1d):
    """`nn.ConvTranspose1d` computed on CPU as a 2-D transposed convolution, as [`VQVAEConv1d`] does."""

    def forward(self, inputs: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if inputs.device.type != "cpu" or output_size is not None:
            return super().forward(inputs, output_size)
        image = inputs.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        output = F.conv_transpose2d(
            image,
            self.weight.unsqueeze(2),
            self.bias,
            (1, self.stride[0]),
            (0, self.padding[0]),
            (0, self.output_padding[0]),
            self.groups,
            (1, self.dilation[0]),
        )
        return output.squeeze(2)


def _codec_activation(hidden: torch.Tensor) -> torch.Tensor:
    """LeakyReLU (slope 0.1, as MelGAN and HiFi-GAN): SEANet's ELU is the same shape, but PyTorch's CPU ELU
    kernel is ~7x slower (28 vs 4 ms on a [16, 16, 8000] tensor, one thread), a fifth of a training step."""
    return F.leaky_relu(hidden, 0.1)


class VQVAECodecResidualUnit(nn.Module):
    """LeakyReLU, dilated 3-tap conv to half the width, LeakyReLU, 1x1 conv back, added to the input (SEANet)."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        inner = max(1, channels // 2)
        self.conv1 = VQVAEConv1d(channels, inner, 3, dilation=dilation, padding=dilation)
        self.conv2 = VQVAEConv1d(inner, channels, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.conv2(_codec_activation(self.conv1(_codec_activation(hidden))))


def _codec_widths(config: VQVAEConfig) -> list[int]:
    """The width of each codec stage's residual units: `hidden_size`, doubled at every stage."""
    return [config.hidden_size * 2**index for index in range(len(config.encoder_strides))]


class VQVAECodecEncoderBlock(nn.Module):
    """A codec encoder stage: residual units (one per dilation), LeakyReLU, strided conv (kernel 2s) doubling the width."""

    def __init__(self, config: VQVAEConfig, width: int, stride: int):
        super().__init__()
        self.units = nn.ModuleList(VQVAECodecResidualUnit(width, d) for d in config.residual_dilations)
        self.downsample = VQVAEConv1d(width, 2 * width, 2 * stride, stride=stride, padding=(stride + 1) // 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            hidden = unit(hidden)
        return self.downsample(_codec_activation(hidden))


class VQVAECodecDecoderBlock(nn.Module):
    """A codec decoder stage: LeakyReLU, transposed conv (kernel 2s, stride s) halving the width, residual units."""

    def __init__(self, config: VQVAEConfig, width: int, stride: int):
        super().__init__()
        self.upsample = VQVAEConvTranspose1d(
            2 * width, width, 2 * stride, stride=stride, padding=(stride + 1) // 2, output_padding=stride % 2
        )
        self.units = nn.ModuleList(VQVAECodecResidualUnit(width, d) for d in config.residual_dilations)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.upsample(_codec_activation(hidden))
        for unit in self.units:
            hidden = unit(hidden)
        return hidden


class VQVAECodecEncoder(GradientCheckpointingLayer):
    """The codec encoder (SoundStream, EnCodec, DAC; `encoder_strides` set): a 7-tap conv to `hidden_size`,
    one [`VQVAECodecEncoderBlock`] per stride (the width doubling each time), LeakyReLU and a 3-tap conv to D.
    A `[B, C, T]` waveform becomes `[B, D, T / prod(strides)]`. Checkpointed like [`VQVAEEncoder`]."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        widths = _codec_widths(config)
        self.conv_in = VQVAEConv1d(config.in_channels, widths[0], 7, padding=3)
        self.blocks = nn.ModuleList(
            VQVAECodecEncoderBlock(config, width, stride)
            for width, stride in zip(widths, config.encoder_strides, strict=True)
        )
        self.conv_out = VQVAEConv1d(2 * widths[-1], config.codebook_dim, 3, padding=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.conv_in(inputs)
        for block in self.blocks:
            hidden = block(hidden)
        return self.conv_out(_codec_activation(hidden)).contiguous()


class VQVAECodecDecoder(GradientCheckpointingLayer):
    """Mirror of [`VQVAECodecEncoder`]: a 7-tap conv from D, one [`VQVAECodecDecoderBlock`] per stride (in
    reverse order), LeakyReLU and a 7-tap conv to the input's channels."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        widths = _codec_widths(config)
        self.conv_in = VQVAEConv1d(config.codebook_dim, 2 * widths[-1], 7, padding=3)
        self.blocks = nn.ModuleList(
            VQVAECodecDecoderBlock(config, width, stride)
            for width, stride in zip(reversed(widths), reversed(config.encoder_strides), strict=True)
        )
        self.conv_out = VQVAEConv1d(widths[0], config.in_channels, 7, padding=3)

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        hidden = self.conv_in(quantized)
        for block in self.blocks:
            hidden = block(hidden)
        return self.conv_out(_codec_activation(hidden)).contiguous()


# ----------------------------------------------------------------------------------------------------------
# Losses


def _real_sample_groups(
    reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`(reconstruction, target)` pairs `[b, C, n]` of float32 signals cut to their real samples: items with the
    same number of real samples (`mask` `[B, T]`, 1 = real) share one pair (all of them, for training crops)."""
    reconstruction, target = reconstruction.float(), target.float()
    if mask is None:
        return [(reconstruction, target)]
    keep = mask.bool()
    lengths = keep.sum(-1)
    groups = []
    for length in lengths.unique().tolist():
        if length == 0:
            continue
        items = (lengths == length).nonzero().flatten().tolist()
        groups.append(
            tuple(torch.stack([signal[i][:, keep[i]] for i in items]) for signal in (reconstruction, target))
        )
    return groups


def _magnitudes(group: tuple[torch.Tensor, torch.Tensor], fft_size: int) -> list[torch.Tensor]:
    """STFT magnitudes (hop fft/4, Hann window, floored at 1e-7) of a `(reconstruction, target)` pair."""
    window = torch.hann_window(fft_size, device=group[1].device)
    return [
        torch.stft(signal.reshape(-1, signal.shape[-1]), fft_size, fft_size // 4, window=window, return_complex=True)
        .abs()
        .clamp(min=1e-7)
        for signal in group
    ]


def multi_resolution_stft_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    fft_sizes: list[int],
    mask: torch.Tensor | None = None,
    log_floor: float = 1e-7,
) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1 (magnitudes floored at `log_floor` before the log), averaged over
    FFT sizes (Yamamoto et al. 2020).

    Both terms are taken over the whole batch (Frobenius norms and the mean over time-frequency bins). With
    `mask` (`[B, T]`, 1 = real sample) each item is cut to its real samples before its STFT, so padding adds
    no frames: an item alone and the same item padded in a batch give the same loss. An FFT size longer than
    an item is skipped for that item.
    """
    groups = _real_sample_groups(reconstruction, target, mask)
    total, used_sizes = reconstruction.new_zeros((), dtype=torch.float32), 0
    for fft_size in fft_sizes:
        diff_sq = target_sq = log_error = total.new_zeros(())
        bins = 0
        for group in groups:
            if group[1].shape[-1] < fft_size:
                continue
            spectra = _magnitudes(group, fft_size)
            diff_sq = diff_sq + (spectra[1] - spectra[0]).pow(2).sum()
            target_sq = target_sq + spectra[1].pow(2).sum()
            logs = [spectrum.clamp(min=log_floor).log() for spectrum in spectra]
            log_error = log_error + (logs[0] - logs[1]).abs().sum()
            bins += spectra[1].numel()
        if bins == 0:
            continue
        convergence = diff_sq.sqrt() / target_sq.sqrt().clamp(min=1e-7)
        total = total + convergence + log_error / bins
        used_sizes += 1
    return total / max(1, used_sizes)


def multi_scale_mel_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    fft_sizes: list[int],
    sampling_rate: int,
    mask: torch.Tensor | None = None,
    filter_banks: dict | None = None,
    floor: float = 1e-5,
) -> torch.Tensor:
    """L1 distance of log-mel magnitudes (natural log, floored at `floor`), averaged over FFT sizes (DAC's
    multi-scale mel loss; hop fft/4, fft/8 mel bands from 0 Hz to Nyquist, Slaney scale and norm, the filter bank
    from `transformers.audio_utils.mel_filter_bank`). Padding is cut as in [`multi_resolution_stft_loss`].
    `filter_banks` (a dict) caches the banks between calls."""
    from transformers.audio_utils import mel_filter_bank

    banks = {} if filter_banks is None else filter_banks
    groups = _real_sample_groups(reconstruction, target, mask)
    total, used_sizes = reconstruction.new_zeros((), dtype=torch.float32), 0
    for fft_size in fft_sizes:
        key = (fft_size, sampling_rate, str(target.device))
        if key not in banks:
            bank = mel_filter_bank(
                num_frequency_bins=fft_size // 2 + 1,
                num_mel_filters=fft_size // 8,
                min_frequency=0.0,
                max_frequency=sampling_rate / 2,
                sampling_rate=sampling_rate,
                norm="slaney",
                mel_scale="slaney",
            )
            banks[key] = torch.from_numpy(bank).float().T.contiguous().to(target.device)  # [mels, bins]
        error, bins = total.new_zeros(()), 0
        for group in groups:
            if group[1].shape[-1] < fft_size:
                continue
            mels = [(banks[key] @ spectrum).clamp(min=floor).log() for spectrum in _magnitudes(group, fft_size)]
            error = error + (mels[0] - mels[1]).abs().sum()
            bins += mels[1].numel()
        if bins:
            total = total + error / bins
            used_sizes += 1
    return total / max(1, used_sizes)


def waveform_correlation_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8
) -> torch.Tensor:
    """1 - the correlation (cosine) `rho` of the two zero-mean waveforms, per item and channel over its real
    samples (`mask` `[B, T]`, 1 = real), averaged: 0 for a copy at any gain, 1 for an unrelated signal.

    The SI-SNR the metrics report is a monotone function of it, 10 log10(rho^2 / (1 - rho^2)), but its gradient
    is bounded where SI-SNR's (in dB) explodes: near rho = 0, where a codec trained on spectral losses starts
    (right magnitudes, free phase). Scale-free, it asks for the waveform's shape and leaves the level to the
    other terms."""
    reconstruction, target = reconstruction.float(), target.float()
    weights = torch.ones_like(target) if mask is None else mask.to(target.dtype).unsqueeze(1).expand_as(target)
    count = weights.sum(-1, keepdim=True).clamp(min=1)
    centred = [
        (signal - (signal * weights).sum(-1, keepdim=True) / count) * weights
        for signal in (reconstruction, target)
    ]
    dot = (centred[0] * centred[1]).sum(-1)
    norms = centred[0].pow(2).sum(-1).add(eps).sqrt() * centred[1].pow(2).sum(-1).add(eps).sqrt()
    real = (weights.sum(-1) > 0).to(dot.dtype)
    return ((1 - dot / norms) * real).sum() / real.sum().clamp(min=1)


def reconstruction_losses(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    waveform_loss: str = "l1",
    waveform_weight: float = 1.0,
    stft_weight: float = 0.0,
    stft_fft_sizes: list[int] = (),
    stft_floor: float = 1e-7,
    mel_weight: float = 0.0,
    mel_fft_sizes: list[int] = (),
    sampling_rate: int | None = None,
    mel_floor: float = 1e-5,
    filter_banks: dict | None = None,
    correlation_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The weighted reconstruction objective and its terms: `"waveform"` (MSE or L1 over real values, `mask`
    `[B, T]` with 1 = real), `"stft"` ([`multi_resolution_stft_loss`]), `"mel"` ([`multi_scale_mel_loss`]) and
    `"correlation"` ([`waveform_correlation_loss`]), each present only when its weight is positive, and `"loss"`,
    their weighted sum. One home for the objective of our model and of any peer trained the same way."""
    reconstruction, target = reconstruction.float(), target.float()
    error = (reconstruction - target).abs()
    error = error.pow(2) if waveform_loss == "mse" else error
    if mask is not None:
        weights = mask.to(error.dtype).unsqueeze(1).expand_as(error)
        waveform = (error * weights).sum() / weights.sum().clamp(min=1)
    else:
        waveform = error.mean()
    terms = {"waveform": waveform}
    loss = waveform_weight * waveform
    if stft_weight > 0:
        terms["stft"] = multi_resolution_stft_loss(reconstruction, target, list(stft_fft_sizes), mask, stft_floor)
        loss = loss + stft_weight * terms["stft"]
    if mel_weight > 0:
        if sampling_rate is None:
            raise ValueError("The mel loss needs `sampling_rate` (its filter bank spans 0 Hz to Nyquist).")
        terms["mel"] = multi_scale_mel_loss(
            reconstruction, target, list(mel_fft_sizes), sampling_rate, mask, filter_banks, mel_floor
        )
        loss = loss + mel_weight * terms["mel"]
    if correlation_weight > 0:
        terms["correlation"] = waveform_correlation_loss(reconstruction, target, mask)
        loss = loss + correlation_weight * terms["correlation"]
    terms["loss"] = loss
    return terms


# ----------------------------------------------------------------------------------------------------------
# Models


class _PerModality:
    """A class attribute that each model answers from its config. transformers' utilities that read the class
    see `class_value` (`main_input_name` must name the first argument of `forward`); a model, its modality's."""

    def __init__(self, class_value, from_config):
        self.class_value = class_value
        self.from_config = from_config

    def __get__(self, model, owner=None):
        return self.class_value if model is None else self.from_config(model.config)


class VQVAEPreTrainedModel(PreTrainedModel):
    config_class = VQVAEConfig
    base_model_prefix = "vqvae"
    # "pixel_values" on the class (the first argument of `forward`), "input_values" on an audio model.
    main_input_name = _PerModality("pixel_values", lambda config: config.main_input_name)
    input_modalities = _PerModality(("image", "audio"), lambda config: (config.modality,))
    # The loss is a mean over the batch: `Trainer` divides it by the gradient-accumulation steps itself.
    accepts_loss_kwargs = False
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "VQVAEResidualBlock",
        "VQVAECodecResidualUnit",
        "VQVAEVectorQuantizer",
        "VQVAEGumbelQuantizer",
        "VQVAEResidualVectorQuantizer",
        "VQVAEFiniteScalarQuantizer",
    ]

    def _init_weights(self, module: nn.Module) -> None:
        # transformers' `initialization` helpers (and, inside `init_weights`, torch's init functions, which
        # transformers routes through them) leave tensors loaded from a checkpoint alone.
        if isinstance(module, (VQVAEConv1d, VQVAEConvTranspose1d)):
            # The codec stacks are residual (the signal's scale rides the skip connections): PyTorch's default
            # init keeps it steady through them, as in EnCodec and DAC, where He-normal grows it ~2.5x a stage.
            module.reset_parameters()
        elif isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            # Audio stacks are deep (one strided layer per factor of two of the hop length) and speech is quiet
            # (RMS ~0.1). PyTorch's default init shrinks the signal ~0.4x per ReLU layer and its biases swamp
            # what is left, so every latent lands on one code and training stalls; He-normal weights and zero
            # biases carry the waveform's variation through the stack.
            init.kaiming_normal_(module.weight, nonlinearity="relu")
            init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            # Image stacks are shallow: PyTorch's default (Kaiming-uniform) init trains them well.
            module.reset_parameters()
        elif isinstance(module, VQVAEQuantizerBase):
            module.reset_parameters()


class VQVAEModel(VQVAEPreTrainedModel):
    """VQ-VAE tokenizer: `encode` inputs to codes, `decode` codes to inputs, `forward` for training.

    Images: `pixel_values` `[B, C, H, W]` -> codes `[B, H/f, W/f]`. Audio: `input_values` `[B, C, T]` ->
    codes `[B, T/hop]`. Sizes must be multiples of the downsampling factor (the processors pad).
    """

    def __init__(self, config: VQVAEConfig):
        super().__init__(config)
        codec = config.uses_codec_architecture
        self.encoder = VQVAECodecEncoder(config) if codec else VQVAEEncoder(config)
        self.quantizer = build_quantizer(config)
        self.decoder = VQVAECodecDecoder(config) if codec else VQVAEDecoder(config)
        self._mel_banks: dict = {}  # the mel loss's filter banks, built on first use (config, not state)
        self.post_init()

    # -- validation -------------------------------------------------------------------------------------
    def _check_inputs(self, inputs: torch.Tensor | None, name: str) -> torch.Tensor:
        config = self.config
        if inputs is None:
            raise ValueError(
                f"Pass `{config.main_input_name}` (a float tensor) to the {config.modality} model."
            )
        if not isinstance(inputs, torch.Tensor):
            raise ValueError(
                f"`{name}` must be a torch.Tensor, got {type(inputs).__name__}; use the processor."
            )
        if inputs.dim() != config.spatial_dims + 2:
            hint = (
                " (add a batch dimension with `.unsqueeze(0)`)"
                if inputs.dim() == config.spatial_dims + 1
                else ""
            )
            raise ValueError(
                f"`{name}` must have shape {config.input_layout}, got {tuple(inputs.shape)}{hint}."
            )
        if not inputs.is_floating_point():
            raise ValueError(
                f"`{name}` must be a float tensor, got {inputs.dtype}; scale integer data to floats first "
                "(the processor does this)."
            )
        if inputs.shape[0] == 0:
            raise ValueError(
                f"`{name}` is an empty batch (shape {tuple(inputs.shape)}); pass at least one item."
            )
        if inputs.shape[1] != config.in_channels:
            raise ValueError(
                f"`{name}` has {inputs.shape[1]} channels but the model expects in_channels={config.in_channels}; "
                "convert the input (the processor's `num_channels`) or use a model with matching channels."
            )
        factor = config.downsampling_factor
        sizes = tuple(inputs.shape[2:])
        if any(size == 0 or size % factor for size in sizes):
            raise ValueError(
                f"`{name}` has size {sizes}, which must be non-zero multiples of the downsampling factor "
                f"{factor}; pad it (the processor's `do_pad`) to {tuple(-(-max(s, 1) // factor) * factor for s in sizes)}."
            )
        # Checks that read the data stay in eager mode: `torch.export` records no branch on tensor values.
        if not torch.compiler.is_exporting() and not torch.isfinite(inputs).all():
            raise ValueError(f"`{name}` contains NaN or inf values; clean the input before tokenizing it.")
        return inputs

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        config = self.config
        layout = config.codes_layout
        if not isinstance(codes, torch.Tensor):
            raise ValueError(f"`codes` must be a torch.LongTensor {layout}, got {type(codes).__name__}.")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"`codes` must be an integer tensor (torch.long), got {codes.dtype}.")
        self.quantizer.check_codes_shape(codes)
        if codes.numel() == 0:
            raise ValueError(f"`codes` is empty (shape {tuple(codes.shape)}).")
        if torch.compiler.is_exporting():  # the range check reads the data: eager mode only
            return codes.long()
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= config.codebook_size:
            raise ValueError(
                f"`codes` must lie in [0, {config.codebook_size - 1}] (codebook_size={config.codebook_size}), "
                f"got values in [{low}, {high}]; were they produced by another tokenizer or offset for an LM?"
            )
        return codes.long()

    def _resolve_inputs(self, pixel_values, input_values, kwargs) -> torch.Tensor:
        """The one input tensor; the first positional argument serves both modalities."""
        kwargs.pop("original_sizes", None)  # the image processor's crop-back info, so `model(**inputs)` works
        kwargs.pop("num_items_in_batch", None)  # Trainer's loss normaliser: the loss is a mean already
        if kwargs:
            raise TypeError(f"Unexpected arguments: {sorted(kwargs)}.")
        if pixel_values is not None and input_values is not None:
            raise ValueError("Pass one of `pixel_values` (images) or `input_values` (audio), not both.")
        inputs = input_values if input_values is not None else pixel_values
        return self._check_inputs(inputs, self.config.main_input_name)

    # -- public API -------------------------------------------------------------------------------------
    def encode(
        self,
        pixel_values: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VQVAEEncoderOutput | tuple:
        """Inputs to codes. Images: `pixel_values` `[B, C, H, W]` -> codes `[B, h, w]`; audio:
        `input_values` `[B, C, T]` -> codes `[B, t]` (`[B, Q, h, w]` / `[B, Q, t]` with `quantizer_type="rvq"`)."""
        inputs = self._resolve_inputs(pixel_values, input_values, kwargs)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        latents = self.encoder(inputs)
        quantized = self.quantizer(latents)  # quantize(): changes nothing
        output = VQVAEEncoderOutput(codes=quantized.codes, latents=latents, quantized=quantized.quantized)
        return output if return_dict else output.to_tuple()

    def decode(self, codes: torch.Tensor, return_dict: bool | None = None) -> VQVAEDecoderOutput | tuple:
        """Codes `[B, h, w]` (images) or `[B, t]` (audio) to the reconstruction. With `quantizer_type="rvq"`,
        `[B, Q', h, w]` / `[B, Q', t]`: the first Q' <= num_quantizers levels."""
        codes = self._check_codes(codes)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        reconstruction = self.decoder(self.quantizer(codes=codes))  # lookup(), through the module's hooks
        output = VQVAEDecoderOutput(reconstruction=reconstruction)
        return output if return_dict else output.to_tuple()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> VQVAEOutput | tuple:
        """Encode, quantize and decode; returns the training loss and its parts.

        `padding_mask` (`[B, T]`, audio only, 1 = real sample) excludes padding from the loss.

        `labels` and `num_items_in_batch` are accepted and ignored, so that `transformers.Trainer` trains the
        model on a dataset with a label column (Fashion-MNIST's classes): a tokenizer's target is its input. The
        loss is a mean already; `accepts_loss_kwargs = False` has Trainer scale it for gradient accumulation.
        """
        inputs = self._resolve_inputs(pixel_values, input_values, kwargs)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if padding_mask is not None:
            if self.config.modality != "audio":
                raise ValueError("`padding_mask` is for audio models; images are padded by the processor.")
            if padding_mask.shape != (inputs.shape[0], inputs.shape[-1]):
                raise ValueError(
                    f"`padding_mask` must have shape [B, T] = {(inputs.shape[0], inputs.shape[-1])}, "
                    f"got {tuple(padding_mask.shape)}."
                )
        encoder_inputs = inputs
        if self.encoder.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # Reentrant checkpointing (`use_reentrant=True`) passes gradients only through inputs that need them.
            encoder_inputs = inputs.detach().requires_grad_(True)
        latents = self.encoder(encoder_inputs)
        # Frames that hold at least one real sample; padding frames count in no loss and no codebook statistic.
        frames = None if padding_mask is None else padding_mask.reshape(*latents.shape[::2], -1).bool().any(-1)
        # Learning is explicit, in training only: encode() and eval-mode calls change no state.
        if self.training:
            self.quantizer.initialize(latents, frames)  # k-means on the first batch
        quantized = self.quantizer(latents, mask=frames)  # quantize()
        if self.training:
            quantized = self.quantizer.update(latents, quantized, frames)  # EMA, restarts; all ranks' statistics
        reconstruction = self.decoder(quantized.quantized)
        reconstruction_loss = self.reconstruction_loss(reconstruction, inputs, padding_mask)
        loss = (
            reconstruction_loss
            + self.config.commitment_cost * quantized.commitment_loss
            + quantized.codebook_loss
            + quantized.extra_loss
        )
        output = VQVAEOutput(
            loss=loss,
            reconstruction=reconstruction,
            codes=quantized.codes,
            reconstruction_loss=reconstruction_loss,
            commitment_loss=quantized.commitment_loss,
            codebook_loss=quantized.codebook_loss,
            perplexity=quantized.perplexity,
            codebook_usage=quantized.codebook_usage,
            extra_loss=quantized.extra_loss,
        )
        return output if return_dict else output.to_tuple()

    def reconstruction_loss(
        self, reconstruction: torch.Tensor, target: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MSE/L1 over real (unpadded) values (times `reconstruction_loss_weight`), plus (audio) the
        multi-resolution STFT, multi-scale mel and waveform-correlation losses: [`reconstruction_losses`] with the
        config's weights."""
        config = self.config
        audio = config.modality == "audio"
        return reconstruction_losses(
            reconstruction,
            target,
            padding_mask,
            waveform_loss=config.reconstruction_loss,
            waveform_weight=config.reconstruction_loss_weight,
            stft_weight=config.stft_loss_weight if audio else 0.0,
            stft_fft_sizes=config.stft_fft_sizes,
            stft_floor=config.stft_loss_floor,
            mel_weight=config.mel_loss_weight if audio else 0.0,
            mel_fft_sizes=config.mel_fft_sizes,
            sampling_rate=config.sampling_rate,
            mel_floor=config.mel_loss_floor,
            filter_banks=self._mel_banks,
            correlation_weight=config.correlation_loss_weight if audio else 0.0,
        )["loss"]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """[`PreTrainedModel.from_pretrained`], reading safetensors weights only.

        Everything else is transformers': weights missing from the checkpoint are initialised by `_init_weights`
        (a fresh codebook is Uniform(-1/K, 1/K)) and reported in the load report and in `missing_keys` (with
        `output_loading_info=True`), unexpected ones in `unexpected_keys`. Tensors of another shape (a checkpoint
        of another `codebook_size`, `codebook_dim` or width) raise `RuntimeError`, unless
        `ignore_mismatched_sizes=True` re-initialises them (`mismatched_keys`); a re-initialised codebook gives
        other codes, so do that only to train further. `device_map` (with CPU and disk offload), `dtype`,
        `low_cpu_mem_usage`, `state_dict` and the rest work as for transformers' own models.

        A `pytorch_model.bin` is never read (unpickling runs code): `use_safetensors=False` and folders or repos
        with only `.bin` weights are refused, as is a truncated or corrupt safetensors file, each with a
        message that says what to do.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("VQVAEModel loads safetensors weights only; pickled `.bin` weights are refused.")
        kwargs["use_safetensors"] = True
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        try:
            return super().from_pretrained(*args, **kwargs)
        except SafetensorError as error:
            raise ValueError(
                f"The weights file of {source} is truncated or corrupt ({error}). Download it again "
                "(`force_download=True`) or save the model again."
            ) from error
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            raise RuntimeError(
                "The checkpoint's tensor shapes do not match this VQVAEConfig (see the load report above): it "
                "was saved with another codebook_size, codebook_dim or width. Load it with the config saved "
                "beside it, or pass ignore_mismatched_sizes=True to re-initialise those tensors (a new codebook "
                "gives other codes: only to train further)."
            ) from error
        except OSError as error:
            if source is None or _has_safetensors_weights(source, kwargs):
                raise  # the weights are there: another problem (network, access, a missing shard)
            raise OSError(
                f"{source} has no model.safetensors. VQVAEModel loads safetensors only and never unpickles "
                "`.bin` files; convert trusted weights with `model.save_pretrained(dir)` (safetensors is the "
                "default)."
            ) from error


def _has_safetensors_weights(source, kwargs: dict) -> bool:
    """Whether `source` (a folder or a Hub repo, at `kwargs`' revision and subfolder) holds safetensors weights,
    single-file or sharded. Asked only after a load failed: if the repo itself cannot be reached, the answer is
    yes, so that the load's own error stands."""
    subfolder = kwargs.get("subfolder") or ""
    hub_options = {
        key: kwargs.get(key) for key in ("revision", "proxies", "token", "cache_dir") if kwargs.get(key)
    }
    try:
        return any(
            has_file(
                source,
                f"{subfolder}/{name}" if subfolder else name,
                local_files_only=bool(kwargs.get("local_files_only")),
                **hub_options,
            )
            for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)
        )
    except Exception:  # noqa: BLE001 - no repo, no access, no network: not a question of the file
        return True


__all__ = [
    "VQVAEModel",
    "VQVAEPreTrainedModel",
    "VQVAEQuantizerBase",
    "VQVAEVectorQuantizer",
    "VQVAEGumbelQuantizer",
    "VQVAEResidualVectorQuantizer",
    "VQVAEFiniteScalarQuantizer",
    "build_quantizer",
    "VQVAEOutput",
    "VQVAEEncoderOutput",
    "VQVAEDecoderOutput",
    "VQVAEQuantizerOutput",
    "nearest_codes",
    "parallel_nearest_codes",
]
