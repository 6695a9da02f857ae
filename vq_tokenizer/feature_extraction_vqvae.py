"""Feature extractor of the audio VQ-VAE: waveforms in, padded `input_values` `[B, C, T]` out."""

from __future__ import annotations

import os

import numpy as np
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import PaddingStrategy, TensorType, logging

from .media_io import convert_channels, load_audio, resample, to_waveform

logger = logging.get_logger(__name__)

__all__ = ["VQVAEFeatureExtractor"]

_FILE_TYPES = (str, os.PathLike, bytes, bytearray)


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch itself is not imported here
        value = value.detach().cpu()
        return (value.float() if value.is_floating_point() else value).numpy()
    return np.asarray(value)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


class VQVAEFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Constructs a VQ-VAE audio feature extractor: it loads, resamples, converts channels and pads waveforms
    into the `input_values` `[B, C, T]` that the audio [`VQVAEModel`] takes, with `T` a multiple of the
    model's hop length, and a `padding_mask` `[B, T]` saying which samples are real.

    This feature extractor inherits from [`~feature_extraction_sequence_utils.SequenceFeatureExtractor`] which
    contains most of the main methods. Users should refer to this superclass for more information regarding
    those methods.

    Args:
        feature_size (`int`, *optional*, defaults to 1):
            Number of audio channels the model takes: 1 for mono, 2 for stereo (the config's `in_channels`).
            Inputs are converted to it: stereo -> mono by the mean of the channels, mono -> stereo by
            duplication.
        sampling_rate (`int`, *optional*, defaults to 16000):
            The sampling rate, in Hz, the model was trained at (the config's `sampling_rate`). Inputs at
            another rate are resampled to it.
        hop_length (`int`, *optional*, defaults to 64):
            Samples per code (the config's `hop_length`). Batches are padded to a multiple of it.
        padding_value (`float`, *optional*, defaults to 0.0):
            The value that is used to fill the padding.
        return_padding_mask (`bool`, *optional*, defaults to `True`):
            Whether `__call__` returns `padding_mask` (int64, 1 = real sample, 0 = padding).

    Example:

    ```python
    >>> import numpy as np
    >>> from vq_tokenizer.feature_extraction_vqvae import VQVAEFeatureExtractor

    >>> feature_extractor = VQVAEFeatureExtractor(sampling_rate=16000, hop_length=64)
    >>> batch = feature_extractor([np.zeros(100), np.zeros(20)], sampling_rate=16000, return_tensors="pt")
    >>> batch["input_values"].shape, batch["padding_mask"].sum(-1).tolist()
    (torch.Size([2, 1, 128]), [100, 20])
    >>> [a.shape for a in feature_extractor.postprocess(batch["input_values"], batch["padding_mask"])]
    [(1, 100), (1, 20)]

    ```
    """

    model_input_names = ["input_values", "padding_mask"]

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 16000,
        hop_length: int = 64,
        padding_value: float = 0.0,
        return_padding_mask: bool = True,
        **kwargs,
    ):
        if feature_size not in (1, 2):
            raise ValueError(
                f"`feature_size` is the number of channels, 1 (mono) or 2 (stereo); got {feature_size!r}."
            )
        _check_positive_int("sampling_rate", sampling_rate)
        _check_positive_int("hop_length", hop_length)
        super().__init__(
            feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs
        )
        self.hop_length = hop_length
        self.return_padding_mask = return_padding_mask

    def __call__(
        self,
        raw_audio,
        sampling_rate: int | None = None,
        padding: bool | str | PaddingStrategy = True,
        max_length: int | None = None,
        truncation: bool = False,
        return_padding_mask: bool | None = None,
        return_tensors: str | TensorType | None = None,
    ) -> BatchFeature:
        """
        Prepare one waveform or a batch of them for the model.

        Args:
            raw_audio (`np.ndarray`, `torch.Tensor`, `list[float]`, `str`, `os.PathLike`, `bytes`, or a list of these):
                One item or a batch (a list, or a 3-D array `[B, C, T]`). An item is:

                - an array or tensor `[T]` (mono) or `[C, T]` (channels first, C <= 2), or a list of floats.
                  Floats should lie in [-1, 1]; `int16` and `int32` PCM are scaled by 2**15 and 2**31, other
                  integer types are refused.
                - a file path or the bytes of a whole file (WAV, FLAC, OGG...), decoded with
                  [`~vq_tokenizer.media_io.load_audio`] at the file's own sampling rate.
            sampling_rate (`int`, *optional*):
                The sampling rate of the array items. If it differs from `self.sampling_rate` they are
                resampled. Pass it: without it arrays are assumed to be at `self.sampling_rate`. Files ignore it.
            padding (`bool`, `str` or [`~utils.PaddingStrategy`], *optional*, defaults to `True`):
                - `True` or `'longest'`: pad to the longest item, rounded up to a multiple of `hop_length`.
                - `'max_length'`: pad to `max_length`, rounded up to a multiple of `hop_length`.
                - `False` or `'do_not_pad'`: no padding at all; the items keep their lengths, which the model
                  only accepts if they are multiples of `hop_length`.
            max_length (`int`, *optional*):
                Length for `padding='max_length'` and `truncation=True` (rounded up to a multiple of
                `hop_length`).
            truncation (`bool`, *optional*, defaults to `False`):
                Cut items longer than `max_length`.
            return_padding_mask (`bool`, *optional*):
                Overrides `self.return_padding_mask` for this call.
            return_tensors (`str` or [`~utils.TensorType`], *optional*):
                `'pt'` for torch tensors; `None` or `'np'` for numpy arrays. Unpadded items of different
                lengths come back as a list of arrays.

        Returns:
            [`BatchFeature`] with `input_values` float32 `[B, C, T]` (C = `feature_size`) and, unless turned
            off, `padding_mask` int64 `[B, T]`: 1 where the sample is real, 0 where it is padding.
        """
        items = self._as_items(raw_audio)
        if any(rate is None for _, rate in items):
            if sampling_rate is None:
                logger.warning(
                    f"It is strongly recommended to pass the `sampling_rate` argument to `{self.__class__.__name__}()`. "
                    "Failing to do so can result in silent errors that might be hard to debug."
                )
            else:
                _check_positive_int("sampling_rate", sampling_rate)
        waveforms = []
        for array, rate in items:
            rate = rate or sampling_rate or self.sampling_rate
            if rate != self.sampling_rate:
                logger.info(f"Resampling audio from {rate} Hz to {self.sampling_rate} Hz.")
                array = resample(array, rate, self.sampling_rate)
            waveforms.append(array)

        return_padding_mask = self.return_padding_mask if return_padding_mask is None else return_padding_mask
        # `pad` works on time-first arrays: [T] for mono, [T, C] otherwise.
        time_first = [w[0] if self.feature_size == 1 else w.T for w in waveforms]
        padded = self.pad(
            BatchFeature({"input_values": time_first}),
            padding=padding,
            max_length=max_length,
            truncation=truncation,
            pad_to_multiple_of=self.hop_length,
            return_attention_mask=return_padding_mask,
        )
        input_values = [np.asarray(v, dtype=np.float32).reshape(len(v), -1).T for v in padded["input_values"]]
        lengths = {v.shape[-1] for v in input_values}
        do_not_pad = padding in (False, "do_not_pad", PaddingStrategy.DO_NOT_PAD)
        if len(lengths) > 1 and not do_not_pad:
            raise ValueError(
                f"Items longer than `max_length` ({max_length}) cannot be padded to it; pass "
                "`truncation=True` to cut them."
            )
        if len(lengths) > 1 and return_tensors is not None and TensorType(return_tensors) != TensorType.NUMPY:
            raise ValueError(
                f"Items have different lengths ({sorted(lengths)}) and `padding=False`; pass `padding=True` "
                "to get one tensor."
            )
        data = {"input_values": np.stack(input_values) if len(lengths) == 1 else input_values}
        if return_padding_mask:
            masks = [np.asarray(m, dtype=np.int64) for m in padded["attention_mask"]]
            data["padding_mask"] = np.stack(masks) if len(lengths) == 1 else masks
        return BatchFeature(data, tensor_type=return_tensors)

    def postprocess(self, input_values, padding_mask=None) -> list[np.ndarray]:
        """
        Turn a batch of model outputs (e.g. the reconstruction) back into waveforms.

        Args:
            input_values (`torch.Tensor` or `np.ndarray`):
                `[B, C, T]`, or `[C, T]` for one item.
            padding_mask (`torch.Tensor` or `np.ndarray`, *optional*):
                The `padding_mask` `[B, T]` (or `[T]`) returned with the inputs; padded samples are dropped.

        Returns:
            `list[np.ndarray]`: one float32 array `[C, T_i]` per item, clipped to [-1, 1] and, with a
            `padding_mask`, trimmed to the item's real samples.
        """
        values = _to_numpy(input_values).astype(np.float32, copy=False)
        if values.ndim == 2:
            values = values[None]
        if values.ndim != 3:
            raise ValueError(f"Expected `input_values` shaped [B, C, T] or [C, T], got shape {values.shape}.")
        values = np.clip(values, -1.0, 1.0)
        if padding_mask is None:
            return list(values)
        mask = _to_numpy(padding_mask)
        if mask.ndim == 1:
            mask = mask[None]
        if mask.shape != (values.shape[0], values.shape[2]):
            raise ValueError(
                f"`padding_mask` has shape {mask.shape} but `input_values` {values.shape} needs "
                f"{(values.shape[0], values.shape[2])}; pass the mask returned with these inputs."
            )
        return [item[:, row.astype(bool)] for item, row in zip(values, mask, strict=True)]

    def _as_items(self, raw_audio) -> list[tuple[np.ndarray, int | None]]:
        """Split the input into items `([C, T] float32 at `feature_size` channels, known rate or None)`."""
        if isinstance(raw_audio, _FILE_TYPES):
            batch = [raw_audio]
        elif isinstance(raw_audio, (list, tuple)):
            if len(raw_audio) == 0:
                raise ValueError("`raw_audio` is an empty list; pass at least one waveform or file.")
            is_one_waveform = all(isinstance(x, (int, float, np.number)) for x in raw_audio)
            batch = [raw_audio] if is_one_waveform else list(raw_audio)
        elif hasattr(raw_audio, "detach") or isinstance(raw_audio, np.ndarray):
            batch = list(raw_audio) if raw_audio.ndim == 3 else [raw_audio]
        else:
            raise ValueError(
                f"`raw_audio` of type {type(raw_audio).__name__} is not supported; pass a numpy array or torch "
                "tensor shaped [T] or [C, T], a file path, or a list of these."
            )
        return [self._as_item(item, index) for index, item in enumerate(batch)]

    def _as_item(self, item, index: int) -> tuple[np.ndarray, int | None]:
        if isinstance(item, _FILE_TYPES):
            return load_audio(item, num_channels=self.feature_size)
        where = f"Item {index}"
        array = to_waveform(item, where)
        if array.shape[0] > 2 and array.shape[1] <= 2:
            raise ValueError(
                f"{where} has shape {array.shape}, which looks like [T, C]; audio is channels first, [C, T]: "
                "pass `array.T`."
            )
        if array.shape[0] > 2:
            raise ValueError(
                f"{where} has {array.shape[0]} channels (shape {array.shape}); only mono and stereo are "
                "supported. Downmix it first (e.g. `array.mean(0)`)."
            )
        peak = float(np.abs(array).max())
        if peak > 1.0:
            logger.warning_once(
                f"Audio peaks at {peak:.3g}, outside [-1, 1]: the model expects float samples in [-1, 1] "
                "(divide 16-bit PCM stored as float by 32768)."
            )
        return convert_channels(array, self.feature_size), None
