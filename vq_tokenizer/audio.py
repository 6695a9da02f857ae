"""Reading, writing and resampling audio as float32 arrays shaped `[C, T]` (channels first).

Decoding goes through `soundfile` (libsndfile), so WAV, FLAC, OGG (Vorbis/Opus), MP3 and the other
libsndfile formats work without torchcodec or ffmpeg. Resampling is `scipy.signal.resample_poly` with the
exact rational ratio `target_sr / orig_sr`, so 22050 Hz -> 16000 Hz is `up=320, down=441`.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

__all__ = ["convert_channels", "load_audio", "resample", "save_audio", "supported_formats"]

_CONVERT_HINT = "Convert it first, e.g. `ffmpeg -i input.m4a output.wav` or `sox input.aiff output.wav`."


def supported_formats() -> list[str]:
    """Container formats libsndfile can read and write here (e.g. `["FLAC", "MP3", "OGG", "WAV", ...]`)."""
    return sorted(sf.available_formats())


def _check_rate(name: str, rate: float | int) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise ValueError(f"`{name}` must be a positive integer number of Hz, got {rate!r}.")
    if not float(rate).is_integer() or rate <= 0:
        raise ValueError(f"`{name}` must be a positive integer number of Hz, got {rate!r}.")
    return int(rate)


def resample(array: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample `array` (`[..., T]`, time on the last axis) from `orig_sr` to `target_sr` Hz.

    Polyphase filtering with the exact ratio reduced by the gcd: the output has `ceil(T * target_sr /
    orig_sr)` samples, so the duration is kept to within one sample. Float inputs keep their dtype; integer
    inputs come back as float32. Equal rates return the input unchanged.
    """
    orig_sr = _check_rate("orig_sr", orig_sr)
    target_sr = _check_rate("target_sr", target_sr)
    array = np.asarray(array)
    if orig_sr == target_sr:
        return array
    ratio = Fraction(target_sr, orig_sr)
    out_dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.float32
    out = resample_poly(array, ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(out_dtype, copy=False)


def convert_channels(array: np.ndarray, num_channels: int) -> np.ndarray:
    """Convert `[C, T]` audio to `num_channels`: any -> mono by the mean, mono -> N by duplication."""
    if num_channels < 1:
        raise ValueError(f"`num_channels` must be >= 1, got {num_channels}.")
    channels = array.shape[0]
    if channels == num_channels:
        return array
    if num_channels == 1:
        return array.mean(axis=0, keepdims=True, dtype=np.float32).astype(array.dtype, copy=False)
    if channels == 1:
        return np.repeat(array, num_channels, axis=0)
    raise ValueError(
        f"Cannot convert {channels}-channel audio to {num_channels} channels; only downmixing to mono and "
        "duplicating mono are defined. Downmix it yourself (e.g. `sox in.wav -c 2 out.wav`)."
    )


def load_audio(
    path_or_bytes: str | os.PathLike | bytes | bytearray,
    sampling_rate: int | None = None,
    num_channels: int | None = None,
) -> tuple[np.ndarray, int]:
    """Decode an audio file (path or its bytes) to a float32 array `[C, T]` in [-1, 1].

    Args:
        path_or_bytes: a file path, or the encoded bytes of a whole file (WAV, FLAC, OGG, MP3, ...).
        sampling_rate: resample to this rate (Hz) if given; otherwise the file's own rate is kept.
        num_channels: convert to this many channels if given (stereo -> mono by the mean, mono ->
            stereo by duplication); otherwise the file's channels are kept.

    Returns:
        `(array, sampling_rate)`: the samples, channels first, and their rate in Hz. After resampling,
        samples are clipped to [-1, 1] because the filter can overshoot on full-scale signals.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the data is not a readable audio format, has no samples, or holds NaN/inf.
    """
    if isinstance(path_or_bytes, (bytes, bytearray)):
        source, name = io.BytesIO(path_or_bytes), f"<{len(path_or_bytes)} bytes>"
    else:
        source = name = os.fspath(path_or_bytes)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"No audio file at {source!r}.")
    try:
        data, file_sr = sf.read(source, dtype="float32", always_2d=True)
    except (sf.SoundFileError, TypeError) as err:
        raise ValueError(
            f"Could not decode audio from {name}: {err}. Readable formats are those of libsndfile "
            f"({', '.join(supported_formats())}); WAV, FLAC and OGG are the safe choices. {_CONVERT_HINT}"
        ) from err
    array = np.ascontiguousarray(data.T)
    if array.shape[1] == 0:
        raise ValueError(f"Audio from {name} has 0 samples; the file is empty or truncated.")
    if not np.isfinite(array).all():
        raise ValueError(f"Audio from {name} contains NaN or infinite samples; the file is corrupt.")
    if num_channels is not None:
        array = convert_channels(array, num_channels)
    if sampling_rate is not None and _check_rate("sampling_rate", sampling_rate) != file_sr:
        array = np.clip(resample(array, file_sr, sampling_rate), -1.0, 1.0)
        file_sr = int(sampling_rate)
    return array, int(file_sr)


def save_audio(
    path: str | os.PathLike, array: np.ndarray, sampling_rate: int, subtype: str | None = None
) -> None:
    """Write `array` (`[C, T]`, or `[T]` for mono) to `path`; the format follows the suffix (.wav, .flac, .ogg).

    `subtype` is libsndfile's sample encoding (default: PCM_16 for WAV/FLAC, VORBIS for OGG). Integer
    encodings clip samples outside [-1, 1].
    """
    sampling_rate = _check_rate("sampling_rate", sampling_rate)
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2:
        raise ValueError(f"Expected audio shaped [C, T] or [T], got shape {array.shape}.")
    if array.shape[1] == 0:
        raise ValueError("Refusing to write audio with 0 samples.")
    if not np.isfinite(array).all():
        raise ValueError("Audio contains NaN or infinite samples; nothing was written.")
    suffix = os.path.splitext(os.fspath(path))[1].lstrip(".").upper()
    if suffix not in sf.available_formats():
        raise ValueError(
            f"Cannot tell the audio format from the suffix of {os.fspath(path)!r}; use one of "
            f"{', '.join('.' + f.lower() for f in ('WAV', 'FLAC', 'OGG'))} "
            f"(libsndfile also writes {', '.join(supported_formats())})."
        )
    sf.write(os.fspath(path), array.T, sampling_rate, subtype=subtype)
