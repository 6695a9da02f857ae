"""VQ-VAE tokenizer configuration."""

from __future__ import annotations

import math

from transformers import PretrainedConfig

# What differs between the modalities, in one place: the input's name, the tensor layouts and the defaults.
_MODALITIES = {
    "image": {
        "main_input_name": "pixel_values",
        "spatial_dims": 2,
        "input_layout": "[B, C, H, W]",
        "codes_layout": "[B, h, w]",
        "downsampling_factor": 4,
        "reconstruction_loss": "mse",
    },
    "audio": {
        "main_input_name": "input_values",
        "spatial_dims": 1,
        "input_layout": "[B, C, T]",
        "codes_layout": "[B, t]",
        "downsampling_factor": 64,
        "reconstruction_loss": "l1",
    },
}
_CODEBOOK_UPDATES = ("ema", "loss")
_QUANTIZER_TYPES = ("vq", "gumbel", "rvq", "fsq")
# Each quantizer type's own options and their defaults; they are None (unused, not saved) for the other types.
_TYPE_OPTIONS = {
    "gumbel": {
        "gumbel_temperature": 1.0,
        "gumbel_temperature_min": 1.0 / 16,
        "gumbel_anneal_steps": 5000,
        "gumbel_kl_weight": 5e-4,
        "gumbel_diversity_weight": 0.0,
        "gumbel_hard": True,
    },
    "rvq": {"num_quantizers": 8, "quantizer_dropout": 0.0},
    "fsq": {"fsq_levels": [8, 5, 5, 5]},
}


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}` must be an int, got {type(value).__name__} ({value!r}).")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"`{name}` must be {allowed}, got {value}.")


def _check_float(
    name: str, value, low: float, high: float, *, low_open: bool = False, high_open: bool = False
):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite float, got {value!r}.")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must be in {interval}, got {value}.")


def _check_power_of_two(name: str, value) -> None:
    _check_int(name, value, 1)
    if value & (value - 1):
        raise ValueError(
            f"`{name}` must be a power of two (each encoder stage halves the size), got {value}; "
            f"try {1 << round(math.log2(value))}."
        )


def _type_options(quantizer_type: str, **given) -> dict:
    """The options of every quantizer type: the given ones of `quantizer_type` (its defaults for the unset ones),
    checked; None for the other types, which may not be set."""
    for other, defaults in _TYPE_OPTIONS.items():
        if other == quantizer_type:
            continue
        for name in defaults:
            if given[name] is not None:
                raise ValueError(
                    f"`{name}` is an option of quantizer_type={other!r}, but quantizer_type={quantizer_type!r}; "
                    f"drop it or set quantizer_type={other!r}."
                )
    options = {name: None for defaults in _TYPE_OPTIONS.values() for name in defaults}
    for name, default in _TYPE_OPTIONS.get(quantizer_type, {}).items():
        options[name] = default if given[name] is None else given[name]
    if quantizer_type == "gumbel":
        _check_float("gumbel_temperature", options["gumbel_temperature"], 0.0, 100.0, low_open=True)
        _check_float(
            "gumbel_temperature_min",
            options["gumbel_temperature_min"],
            0.0,
            options["gumbel_temperature"],
            low_open=True,
        )
        _check_int("gumbel_anneal_steps", options["gumbel_anneal_steps"], 0)
        _check_float("gumbel_kl_weight", options["gumbel_kl_weight"], 0.0, 1e6)
        _check_float("gumbel_diversity_weight", options["gumbel_diversity_weight"], 0.0, 1e6)
        if not isinstance(options["gumbel_hard"], bool):
            raise ValueError(f"`gumbel_hard` must be a bool, got {options['gumbel_hard']!r}.")
        for name in ("gumbel_temperature", "gumbel_temperature_min", "gumbel_kl_weight", "gumbel_diversity_weight"):
            options[name] = float(options[name])
    elif quantizer_type == "rvq":
        _check_int("num_quantizers", options["num_quantizers"], 1, 64)
        _check_float("quantizer_dropout", options["quantizer_dropout"], 0.0, 1.0)
        options["quantizer_dropout"] = float(options["quantizer_dropout"])
    elif quantizer_type == "fsq":
        levels = options["fsq_levels"]
        if isinstance(levels, (str, bytes)) or not isinstance(levels, (list, tuple)) or not levels:
            raise ValueError(
                f"`fsq_levels` must be a non-empty list of ints, e.g. [8, 5, 5, 5], got {levels!r}."
            )
        for level in levels:
            _check_int("fsq_levels[i]", level, 2, 1 << 16)
        if math.prod(levels) > 1 << 24:
            raise ValueError(f"`fsq_levels` give prod({list(levels)}) codes, more than {1 << 24}.")
        options["fsq_levels"] = list(levels)
    return options


def _codec_layout(modality: str, strides, dilations, downsampling_factor) -> tuple[list[int], list[int]]:
    """The checked `encoder_strides` and `residual_dilations` of the codec architecture."""
    if modality != "audio":
        raise ValueError(
            "`encoder_strides` (the codec architecture) is for audio models; images use `downsampling_factor`."
        )
    if isinstance(strides, (str, bytes)) or not isinstance(strides, (list, tuple)) or not strides:
        raise ValueError(f"`encoder_strides` must be a non-empty list of ints, e.g. [2, 4, 5, 8], got {strides!r}.")
    for stride in strides:
        _check_int("encoder_strides[i]", stride, 2, 16)
    if len(strides) > 8:
        raise ValueError(f"`encoder_strides` may have at most 8 stages, got {len(strides)}.")
    hop = math.prod(strides)
    if downsampling_factor is not None and downsampling_factor != hop:
        raise ValueError(
            f"`encoder_strides` {list(strides)} give a hop of {hop} samples, but the hop length / "
            f"downsampling_factor is {downsampling_factor}; pass only `encoder_strides`."
        )
    dilations = [1, 3, 9] if dilations is None else dilations
    if isinstance(dilations, (str, bytes)) or not isinstance(dilations, (list, tuple)):
        raise ValueError(f"`residual_dilations` must be a list of ints, e.g. [1, 3, 9], got {dilations!r}.")
    for dilation in dilations:
        _check_int("residual_dilations[i]", dilation, 1, 64)
    return list(strides), list(dilations)


class VQVAEConfig(PretrainedConfig):
    r"""
    Configuration of a [`VQVAEModel`]: a VQ-VAE tokenizer (van den Oord et al. 2017,
    https://arxiv.org/abs/1711.00937) for images (2-D convolutions) or audio (1-D convolutions).

    Args:
        modality (`str`, *optional*, defaults to `"image"`):
            `"image"` (inputs `pixel_values` `[B, C, H, W]`, codes `[B, h, w]`) or `"audio"` (inputs
            `input_values` `[B, C, T]`, codes `[B, t]`).
        in_channels (`int`, *optional*, defaults to 1):
            Channels of the input: 1 (grey / mono), 3 (RGB), 2 (stereo)...
        hidden_size (`int`, *optional*, defaults to 128):
            Width of the encoder and decoder convolutions.
        num_residual_layers (`int`, *optional*, defaults to 2):
            Residual blocks (ReLU, 3x3 conv, ReLU, 1x1 conv) after the downsampling stack and before the
            upsampling stack.
        residual_hidden_size (`int`, *optional*, defaults to 32):
            Width inside each residual block.
        downsampling_factor (`int`, *optional*):
            Ratio of input size to code-grid size per spatial axis (images), or samples per code (audio, the
            hop length). A power of two: one strided 4x4 convolution per factor of two. Defaults to 4 for
            images and 64 for audio. `hop_length` is accepted as an alias for audio.
        encoder_strides (`list[int]`, *optional*):
            Audio only: the codec architecture (SoundStream / EnCodec / DAC style) instead of the paper's. Each
            encoder stage runs residual units at its width, then a strided convolution (kernel 2s, stride s) that
            doubles the width; the decoder mirrors it with transposed convolutions. The hop length is the product
            (e.g. `[2, 4, 5, 8]`: 320 samples, 50 frames/s at 16 kHz; any strides, not only powers of two).
            `hidden_size` is the width of the first stage; `num_residual_layers` and `residual_hidden_size` are
            not used (each unit halves the width inside).
        residual_dilations (`list[int]`, *optional*, defaults to `[1, 3, 9]` with `encoder_strides`):
            The dilations of the residual units of each codec stage (one unit per entry: LeakyReLU, dilated 3-tap
            convolution, LeakyReLU, 1x1 convolution).
        quantizer_type (`str`, *optional*, defaults to `"vq"`):
            How latents become codes, one of:

            - `"vq"`: the paper's nearest-neighbour codebook (all the options from `commitment_cost` to
              `codebook_lookup_dim` below apply).
            - `"gumbel"`: logits over the K codes, relaxed by Gumbel-softmax in training with a KL term to the
              uniform prior (DALL-E's dVAE, Ramesh et al. 2021, https://arxiv.org/abs/2102.12092); codes are
              the argmax in evaluation and `encode`. Options `gumbel_*`.
            - `"rvq"`: `num_quantizers` codebooks of K codes, each quantizing the residual of the ones before
              (SoundStream, https://arxiv.org/abs/2107.03312), each learning as `"vq"` does (its options
              apply per level). Codes `[B, Q, h, w]` / `[B, Q, t]`.
            - `"fsq"`: finite scalar quantization (Mentzer et al. 2023, https://arxiv.org/abs/2309.15505):
              `len(fsq_levels)` bounded dimensions rounded to a few levels each; K = prod(fsq_levels); no
              codebook to learn and no codebook loss.
        codebook_size (`int`, *optional*, defaults to 512):
            Number of codebook vectors K (the vocabulary size of the codes; per level for `"rvq"`). For
            `"fsq"` it is derived (the product of `fsq_levels`): leave it unset.
        codebook_dim (`int`, *optional*, defaults to 64):
            Dimension D of the encoder output that is quantized.
        commitment_cost (`float`, *optional*, defaults to 0.25):
            Weight beta of the commitment loss `||z_e - sg[e]||^2`.
        codebook_update (`str`, *optional*, defaults to `"ema"`):
            `"ema"`: exponential-moving-average codebook updates (paper appendix A.1) with Laplace-smoothed
            counts; `"loss"`: the paper's codebook loss `||sg[z_e] - e||^2` trained by the optimiser.
        ema_decay (`float`, *optional*, defaults to 0.99):
            Decay of the EMA statistics, in (0, 1).
        ema_epsilon (`float`, *optional*, defaults to 1e-5):
            Laplace smoothing of the EMA cluster sizes.
        kmeans_init (`bool`, *optional*, defaults to `True`):
            Initialise the codebook by k-means on the encoder outputs of the first training batch.
        kmeans_iters (`int`, *optional*, defaults to 10):
            Lloyd iterations of that k-means.
        dead_code_threshold (`float`, *optional*, defaults to 1.0):
            A code whose moving-average use (decay 0.9, about the last 10 steps) falls below this many vectors
            per training step is restarted from a recent encoder output. 0 disables restarts.
        use_l2_normalized_codes (`bool`, *optional*, defaults to `False`):
            Look up codes by cosine similarity of l2-normalised vectors (Yu et al. 2021, ViT-VQGAN).
        codebook_lookup_dim (`int`, *optional*):
            If set, project the encoder output to this lower dimension for the lookup and back afterwards
            (factorised codes, Yu et al. 2021). Must be <= `codebook_dim`.
        distance_chunk_size (`int`, *optional*, defaults to 4194304):
            Most distance entries (vectors x codes) computed at once in the nearest-code search; bounds its
            extra memory (4 bytes each) whatever N and K are.
        gumbel_temperature (`float`, *optional*, defaults to 1.0):
            `"gumbel"` only: the Gumbel-softmax temperature at the first training step, in (0, 100].
        gumbel_temperature_min (`float`, *optional*, defaults to 0.0625):
            `"gumbel"` only: the temperature reached after `gumbel_anneal_steps` (cosine annealing), in
            (0, `gumbel_temperature`].
        gumbel_anneal_steps (`int`, *optional*, defaults to 5000):
            `"gumbel"` only: training steps (model forwards in training mode) over which the temperature
            falls; 0 starts at `gumbel_temperature_min`.
        gumbel_kl_weight (`float`, *optional*, defaults to 0.0005):
            `"gumbel"` only: weight of the KL divergence of the code distribution to the uniform prior (mean
            over positions, in nats) added to the loss.
        gumbel_diversity_weight (`float`, *optional*, defaults to 0.0):
            `"gumbel"` only: weight of the KL divergence of the batch's *mean* code distribution to the uniform
            prior (log K minus its entropy: wav2vec 2.0's codebook diversity loss, Baevski et al. 2020,
            https://arxiv.org/abs/2006.11477), added to the loss. Unlike the per-position KL it lets each position
            choose confidently while pushing the batch to use every code: the cure for the relaxation's early
            collapse onto a few codes. 0 turns it off.
        gumbel_hard (`bool`, *optional*, defaults to `True`):
            `"gumbel"` only: the decoder sees one-hot samples with the soft sample's gradients
            (straight-through); `False`: the soft sample itself (DALL-E's choice).
        num_quantizers (`int`, *optional*, defaults to 8):
            `"rvq"` only: Q, the number of residual levels, in [1, 64].
        quantizer_dropout (`float`, *optional*, defaults to 0.0):
            `"rvq"` only: the share of training examples, in [0, 1], that use a random number of levels (1 to
            Q, uniformly), so that one model decodes any number of levels (SoundStream); 0 turns it off.
        fsq_levels (`list[int]`, *optional*, defaults to `[8, 5, 5, 5]`):
            `"fsq"` only: the number of levels of each bounded dimension, each at least 2.
        reconstruction_loss (`str`, *optional*):
            `"mse"` (default for images) or `"l1"` (default for audio).
        reconstruction_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of that MSE/L1 term on the values. EnCodec weighs its waveform L1 0.1 beside its spectral
            losses (the speech recipe does too). 0 leaves only the spectral losses (audio), so one of the three
            weights must be positive.
        stft_loss_weight (`float`, *optional*, defaults to 1.0):
            Audio only: weight of the multi-resolution STFT loss added to the waveform loss.
        stft_fft_sizes (`list[int]`, *optional*, defaults to `[256, 512, 1024]`):
            Audio only: FFT sizes of that loss (hop = fft/4, Hann window).
        stft_loss_floor (`float`, *optional*, defaults to 1e-7):
            Audio only: STFT magnitudes are floored here before the log of that loss's log-magnitude term. Below it
            differences count as silence; a low floor spends the loss on noise far below hearing.
        mel_loss_weight (`float`, *optional*, defaults to 0.0):
            Audio only: weight of the multi-scale log-mel L1 loss (DAC) added to the waveform loss.
        mel_fft_sizes (`list[int]`, *optional*, defaults to `[256, 512, 1024, 2048]`):
            Audio only: FFT sizes of that loss (hop = fft/4, Hann window, fft/8 mel bands each).
        mel_loss_floor (`float`, *optional*, defaults to 1e-5):
            Audio only: mel magnitudes are floored here before the log (DAC's 1e-5).
        correlation_loss_weight (`float`, *optional*, defaults to 0.0):
            Audio only: weight of the waveform-correlation loss (1 - the cosine of the zero-mean waveforms, per
            item; SI-SNR is a monotone function of that cosine). The spectral losses leave the phase free; this
            term asks for the waveform itself, at any gain.
        sampling_rate (`int`, *optional*, defaults to 16000):
            Audio only: the sampling rate the model works at.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Not used by the convolutions (they keep PyTorch's default init); kept for the library's helpers.

    Example:

    ```python
    >>> from vq_tokenizer import VQVAEConfig, VQVAEModel

    >>> config = VQVAEConfig(modality="image", in_channels=1, codebook_size=512, codebook_dim=64)
    >>> model = VQVAEModel(config)
    >>> config.downsampling_factor, config.num_downsampling_layers
    (4, 2)
    ```"""

    model_type = "vqvae"

    def __init__(
        self,
        modality: str = "image",
        in_channels: int = 1,
        hidden_size: int = 128,
        num_residual_layers: int = 2,
        residual_hidden_size: int = 32,
        downsampling_factor: int | None = None,
        encoder_strides: list[int] | tuple[int, ...] | None = None,
        residual_dilations: list[int] | tuple[int, ...] | None = None,
        quantizer_type: str = "vq",
        codebook_size: int | None = None,
        codebook_dim: int = 64,
        commitment_cost: float = 0.25,
        codebook_update: str = "ema",
        ema_decay: float = 0.99,
        ema_epsilon: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 1.0,
        use_l2_normalized_codes: bool = False,
        codebook_lookup_dim: int | None = None,
        distance_chunk_size: int = 1 << 22,
        gumbel_temperature: float | None = None,
        gumbel_temperature_min: float | None = None,
        gumbel_anneal_steps: int | None = None,
        gumbel_kl_weight: float | None = None,
        gumbel_diversity_weight: float | None = None,
        gumbel_hard: bool | None = None,
        num_quantizers: int | None = None,
        quantizer_dropout: float | None = None,
        fsq_levels: list[int] | tuple[int, ...] | None = None,
        reconstruction_loss: str | None = None,
        reconstruction_loss_weight: float = 1.0,
        stft_loss_weight: float = 1.0,
        stft_fft_sizes: list[int] | tuple[int, ...] = (256, 512, 1024),
        mel_loss_weight: float = 0.0,
        mel_fft_sizes: list[int] | tuple[int, ...] = (256, 512, 1024, 2048),
        stft_loss_floor: float = 1e-7,
        mel_loss_floor: float = 1e-5,
        correlation_loss_weight: float = 0.0,
        sampling_rate: int = 16000,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        hop_length = kwargs.pop("hop_length", None)
        if modality not in _MODALITIES:
            raise ValueError(f"`modality` must be one of {tuple(_MODALITIES)}, got {modality!r}.")
        if hop_length is not None:
            if modality != "audio":
                raise ValueError("`hop_length` is for audio; for images pass `downsampling_factor`.")
            if downsampling_factor is not None and downsampling_factor != hop_length:
                raise ValueError(
                    f"`hop_length` ({hop_length}) and `downsampling_factor` ({downsampling_factor}) "
                    "disagree; pass only one of them."
                )
            downsampling_factor = hop_length
        if encoder_strides is not None:
            encoder_strides, residual_dilations = _codec_layout(
                modality, encoder_strides, residual_dilations, downsampling_factor
            )
            downsampling_factor = math.prod(encoder_strides)
        elif residual_dilations is not None:
            raise ValueError(
                "`residual_dilations` shapes the codec architecture; set `encoder_strides` too (e.g. [2, 4, 5, 8])."
            )
        if downsampling_factor is None:
            downsampling_factor = _MODALITIES[modality]["downsampling_factor"]
        if reconstruction_loss is None:
            reconstruction_loss = _MODALITIES[modality]["reconstruction_loss"]

        _check_int("in_channels", in_channels, 1, 64)
        _check_int("hidden_size", hidden_size, 1)
        _check_int("num_residual_layers", num_residual_layers, 0, 64)
        _check_int("residual_hidden_size", residual_hidden_size, 1)
        if encoder_strides is None:
            _check_power_of_two("downsampling_factor", downsampling_factor)
        if quantizer_type not in _QUANTIZER_TYPES:
            raise ValueError(f"`quantizer_type` must be one of {_QUANTIZER_TYPES}, got {quantizer_type!r}.")
        options = _type_options(
            quantizer_type,
            gumbel_temperature=gumbel_temperature,
            gumbel_temperature_min=gumbel_temperature_min,
            gumbel_anneal_steps=gumbel_anneal_steps,
            gumbel_kl_weight=gumbel_kl_weight,
            gumbel_diversity_weight=gumbel_diversity_weight,
            gumbel_hard=gumbel_hard,
            num_quantizers=num_quantizers,
            quantizer_dropout=quantizer_dropout,
            fsq_levels=fsq_levels,
        )
        if quantizer_type == "fsq":
            derived = math.prod(options["fsq_levels"])
            if codebook_size is not None and codebook_size != derived:
                raise ValueError(
                    f"`codebook_size` is derived from `fsq_levels` for quantizer_type='fsq' "
                    f"(prod({options['fsq_levels']}) = {derived}); leave it unset, got {codebook_size!r}."
                )
            codebook_size = derived
        elif codebook_size is None:
            codebook_size = 512
        _check_int("codebook_size", codebook_size, 2, 1 << 24)
        _check_int("codebook_dim", codebook_dim, 1)
        _check_float("commitment_cost", commitment_cost, 0.0, 100.0)
        if codebook_update not in _CODEBOOK_UPDATES:
            raise ValueError(
                f"`codebook_update` must be one of {_CODEBOOK_UPDATES}, got {codebook_update!r}."
            )
        _check_float("ema_decay", ema_decay, 0.0, 1.0, low_open=True, high_open=True)
        _check_float("ema_epsilon", ema_epsilon, 0.0, 1.0, low_open=True)
        if not isinstance(kmeans_init, bool):
            raise ValueError(f"`kmeans_init` must be a bool, got {kmeans_init!r}.")
        _check_int("kmeans_iters", kmeans_iters, 0, 1000)
        _check_float("dead_code_threshold", dead_code_threshold, 0.0, 1e9)
        if not isinstance(use_l2_normalized_codes, bool):
            raise ValueError(f"`use_l2_normalized_codes` must be a bool, got {use_l2_normalized_codes!r}.")
        if use_l2_normalized_codes and quantizer_type == "rvq":
            raise ValueError(
                "`use_l2_normalized_codes` does not suit quantizer_type='rvq': each level quantizes a residual, "
                "whose norm is what the next levels refine; leave it False."
            )
        if codebook_lookup_dim is not None:
            _check_int("codebook_lookup_dim", codebook_lookup_dim, 1, codebook_dim)
        _check_int("distance_chunk_size", distance_chunk_size, 1)
        if reconstruction_loss not in ("mse", "l1"):
            raise ValueError(f"`reconstruction_loss` must be 'mse' or 'l1', got {reconstruction_loss!r}.")
        _check_float("reconstruction_loss_weight", reconstruction_loss_weight, 0.0, 1e6)
        _check_float("stft_loss_weight", stft_loss_weight, 0.0, 1e6)
        stft_fft_sizes = list(stft_fft_sizes)
        for size in stft_fft_sizes:
            _check_power_of_two("stft_fft_sizes[i]", size)
        _check_float("mel_loss_weight", mel_loss_weight, 0.0, 1e6)
        mel_fft_sizes = list(mel_fft_sizes)
        if not mel_fft_sizes:
            raise ValueError("`mel_fft_sizes` must name at least one FFT size, e.g. [512, 1024, 2048].")
        for size in mel_fft_sizes:
            _check_power_of_two("mel_fft_sizes[i]", size)
            if size < 64:
                raise ValueError(f"`mel_fft_sizes` must be >= 64 (8 mel bands at least), got {size}.")
        _check_float("stft_loss_floor", stft_loss_floor, 0.0, 1.0, low_open=True)
        _check_float("mel_loss_floor", mel_loss_floor, 0.0, 1.0, low_open=True)
        _check_float("correlation_loss_weight", correlation_loss_weight, 0.0, 1e6)
        audio_weight = stft_loss_weight + mel_loss_weight + correlation_loss_weight if modality == "audio" else 0.0
        if reconstruction_loss_weight == 0 and audio_weight == 0:
            raise ValueError(
                "`reconstruction_loss_weight` is 0 and no audio loss is on (`stft_loss_weight`, `mel_loss_weight`, "
                "`correlation_loss_weight`, audio only): the model would have nothing to learn; give one a positive "
                "weight."
            )
        _check_int("sampling_rate", sampling_rate, 1)
        _check_float("initializer_range", initializer_range, 0.0, 10.0)

        self.modality = modality
        self.in_channels = in_channels
        self.hidden_size = hidden_size
        self.num_residual_layers = num_residual_layers
        self.residual_hidden_size = residual_hidden_size
        self.downsampling_factor = downsampling_factor
        self.encoder_strides = encoder_strides
        self.residual_dilations = residual_dilations
        self.quantizer_type = quantizer_type
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.commitment_cost = float(commitment_cost)
        self.codebook_update = codebook_update
        self.ema_decay = float(ema_decay)
        self.ema_epsilon = float(ema_epsilon)
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = float(dead_code_threshold)
        self.use_l2_normalized_codes = use_l2_normalized_codes
        self.codebook_lookup_dim = codebook_lookup_dim
        self.distance_chunk_size = distance_chunk_size
        for name, value in options.items():
            setattr(self, name, value)
        self.reconstruction_loss = reconstruction_loss
        self.reconstruction_loss_weight = float(reconstruction_loss_weight)
        self.stft_loss_weight = float(stft_loss_weight)
        self.stft_fft_sizes = stft_fft_sizes
        self.mel_loss_weight = float(mel_loss_weight)
        self.mel_fft_sizes = mel_fft_sizes
        self.stft_loss_floor = float(stft_loss_floor)
        self.mel_loss_floor = float(mel_loss_floor)
        self.correlation_loss_weight = float(correlation_loss_weight)
        self.sampling_rate = sampling_rate
        self.initializer_range = float(initializer_range)
        super().__init__(**kwargs)

    @property
    def num_downsampling_layers(self) -> int:
        """Strided convolutions in the encoder (and transposed ones in the decoder)."""
        if self.encoder_strides is not None:
            return len(self.encoder_strides)
        return int(math.log2(self.downsampling_factor))

    @property
    def uses_codec_architecture(self) -> bool:
        """Whether the encoder/decoder are the codec stacks (`encoder_strides` set) rather than the paper's."""
        return self.encoder_strides is not None

    @property
    def spatial_dims(self) -> int:
        """Axes of the input after the channels: 2 for images, 1 for audio."""
        return _MODALITIES[self.modality]["spatial_dims"]

    @property
    def input_layout(self) -> str:
        """The input's shape, for messages: `"[B, C, H, W]"` (images) or `"[B, C, T]"` (audio)."""
        return _MODALITIES[self.modality]["input_layout"]

    @property
    def codes_layout(self) -> str:
        """The codes' shape, for messages: `"[B, h, w]"` (images) or `"[B, t]"` (audio); with
        `quantizer_type="rvq"` the level axis comes second: `"[B, Q, h, w]"` / `"[B, Q, t]"`."""
        layout = _MODALITIES[self.modality]["codes_layout"]
        return layout.replace("[B, ", "[B, Q, ") if self.quantizer_type == "rvq" else layout

    @property
    def codes_per_position(self) -> int:
        """Codes at each position of the code grid: `num_quantizers` for `"rvq"`, else 1."""
        return self.num_quantizers if self.quantizer_type == "rvq" else 1

    @property
    def bits_per_position(self) -> float:
        """Bits the codes of one grid position carry: `codes_per_position * log2(codebook_size)`."""
        return self.codes_per_position * math.log2(self.codebook_size)

    @property
    def hop_length(self) -> int:
        """Audio samples per code (the downsampling factor)."""
        return self.downsampling_factor

    @property
    def frame_rate(self) -> float:
        """Audio codes per second."""
        return self.sampling_rate / self.downsampling_factor

    @property
    def lookup_dim(self) -> int:
        """Dimension of the space the nearest code is searched in."""
        return self.codebook_lookup_dim or self.codebook_dim

    @property
    def main_input_name(self) -> str:
        """The model's input argument: `"pixel_values"` (images) or `"input_values"` (audio)."""
        return _MODALITIES[self.modality]["main_input_name"]


__all__ = ["VQVAEConfig"]
