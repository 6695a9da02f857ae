"""File decoding, writing and resampling: the one place where images and audio enter and leave as files.

Audio comes out as float32 arrays shaped `[C, T]` (channels first) in [-1, 1]. Decoding goes through
`soundfile` (libsndfile), so WAV, FLAC, OGG (Vorbis/Opus), MP3 and the other libsndfile formats work without
torchcodec or ffmpeg. Resampling is `scipy.signal.resample_poly` with the exact rational ratio
`target_sr / orig_sr`, so 22050 Hz -> 16000 Hz is `up=320, down=441`. soundfile and scipy are the optional
`audio` extra and are imported only by the functions that need them.

Images come out as 8-bit PIL images. 16-bit images follow one policy, here and in the image processor
(`image_to_8bit`): they are scaled to 8 bits, not clipped as PIL's own conversion does.

This module imports nothing else from the package, so it can ship to the Hub next to the processors.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "convert_channels",
    "decode_audio_example",
    "image_to_8bit",
    "load_audio",
    "load_image",
    "resample",
    "save_audio",
    "save_image",
    "standard_mode",
    "supported_formats",
    "to_waveform",
]

_CONVERT_HINT = "Convert it first, e.g. `ffmpeg -i input.m4a output.wav` or `sox input.aiff output.wav`."
# Integer PCM is scaled the way soundfile decodes it; other integer types are ambiguous and refused.
_PCM_SCALES = {np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}
# PIL modes whose samples are wider than 8 bits: 16-bit PNG/TIFF greyscale ("I;16*"), 32-bit integer ("I",
# how Pillow used to open 16-bit PNGs) and 32-bit float ("F").
WIDE_IMAGE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


# ------------------------------------------------------------------------------------------------------ audio


def supported_formats() -> list[str]:
    """Container formats libsndfile can read and write here (e.g. `["FLAC", "MP3", "OGG", "WAV", ...]`)."""
    import soundfile

    return sorted(soundfile.available_formats())


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
    from scipy.signal import resample_poly

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


def to_waveform(array: Any, where: str = "Audio") -> np.ndarray:
    """An array, tensor or list of samples -> float32 `[C, T]`, checked.

    `[T]` becomes `[1, T]`; `[C, T]` is taken as channels first. Floats should lie in [-1, 1]; `int16` and
    `int32` PCM are scaled by 2**15 and 2**31 (as soundfile decodes them), other integer types are refused.

    Raises:
        ValueError: naming `where`, if the samples are not real numbers, not 1-D/2-D, empty, or hold NaN/inf.
    """
    if type(array).__module__.startswith("torch") and hasattr(array, "detach"):
        array = array.detach().cpu()
        array = (array.float() if array.is_floating_point() else array).numpy()
    array = np.asarray(array)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise ValueError(f"{where} has dtype {array.dtype}; audio must be real float samples in [-1, 1].")
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype not in _PCM_SCALES:
            raise ValueError(
                f"{where} has integer dtype {array.dtype}; convert it to float in [-1, 1] (e.g. "
                "`array / 32768` for 16-bit PCM). int16 and int32 PCM are accepted as they are."
            )
        array = array.astype(np.float32) / _PCM_SCALES[array.dtype]
    array = array.astype(np.float32, copy=False)
    if array.ndim == 1:
        array = array[None]
    elif array.ndim != 2:
        raise ValueError(
            f"{where} has shape {array.shape} ({array.ndim}-D); expected [T] (mono) or [C, T] (channels first)."
        )
    if array.shape[1] == 0:
        raise ValueError(f"{where} has 0 samples; remove empty clips first.")
    if not np.isfinite(array).all():
        raise ValueError(f"{where} contains NaN or infinite samples; clean or drop it first.")
    return array


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
    import soundfile

    if isinstance(path_or_bytes, (bytes, bytearray)):
        source, name = io.BytesIO(path_or_bytes), f"<{len(path_or_bytes)} bytes>"
    else:
        source = name = os.fspath(path_or_bytes)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"No audio file at {source!r}.")
    try:
        data, file_sr = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, TypeError) as err:
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


def decode_audio_example(value: Any, sampling_rate: int | None = None) -> tuple[np.ndarray, int | None]:
    """One audio cell of a dataset -> `(float32 [C, T], its rate in Hz or None)`, neither resampled nor
    converted.

    A cell is a float array or list (`[T]` or `[C, T]`; int16/int32 PCM is scaled as `to_waveform` does), a
    `datasets` audio dict (`{"array", "sampling_rate"}`, or undecoded `{"bytes", "path"}`), the bytes of a
    whole file, or a file path. `sampling_rate` is the rate of a bare array (e.g. from the dataset's
    sampling-rate column); a file's or a dict's own rate takes precedence.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: undecodable bytes, or samples that are empty, not real numbers, or NaN/inf.
    """
    if sampling_rate is not None:
        sampling_rate = _check_rate("sampling_rate", sampling_rate)
    if isinstance(value, dict):
        if value.get("array") is not None:
            rate = value.get("sampling_rate")
            rate = sampling_rate if rate is None else _check_rate("sampling_rate", rate)
            return to_waveform(value["array"], "Audio array"), rate
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path") is not None:
            value = value["path"]
        else:
            raise ValueError(
                f"Audio cell has none of 'array', 'bytes' or 'path' set (keys: {sorted(value)}); "
                "nothing to decode."
            )
    if isinstance(value, (str, os.PathLike, bytes, bytearray)):
        return load_audio(value)
    return to_waveform(value, "Audio array"), sampling_rate


def save_audio(
    path: str | os.PathLike, array: np.ndarray, sampling_rate: int, subtype: str | None = None
) -> None:
    """Write `array` (`[C, T]`, or `[T]` for mono) to `path`; the format follows the suffix (.wav, .flac, .ogg).

    `subtype` is libsndfile's sample encoding (default: PCM_16 for WAV/FLAC, VORBIS for OGG). Integer
    encodings clip samples outside [-1, 1].
    """
    import soundfile

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
    if suffix not in soundfile.available_formats():
        raise ValueError(
            f"Cannot tell the audio format from the suffix of {os.fspath(path)!r}; use one of "
            f"{', '.join('.' + f.lower() for f in ('WAV', 'FLAC', 'OGG'))} "
            f"(libsndfile also writes {', '.join(supported_formats())})."
        )
    soundfile.write(os.fspath(path), array.T, sampling_rate, subtype=subtype)


# ----------------------------------------------------------------------------------------------------- images


def image_to_8bit(values: np.ndarray) -> np.ndarray:
    """The one policy for images wider than 8 bits: scale them to uint8, never clip.

    16-bit samples (`uint16`, PIL's `I;16` modes) are divided by 257, so 65535 -> 255 exactly. Samples whose
    width is not known from the type (PIL's 32-bit `I` and `F` modes, other integer types) are taken as
    16-bit when any exceeds 255 and as 8-bit otherwise. Values are rounded and clipped to [0, 255].
    """
    values = np.asarray(values)
    if values.dtype == np.uint8:
        return values
    if values.dtype.kind == "u" and values.dtype.itemsize == 2:
        scale = 257.0
    else:
        scale = 257.0 if values.size and values.max() > 255 else 1.0
    return np.clip(np.round(values.astype(np.float64) / scale), 0, 255).astype(np.uint8)


def standard_mode(image: Image.Image) -> Image.Image:
    """A PIL image in one of the modes "L", "LA", "RGB", "RGBA" or "F" (32-bit float, kept as it is).

    16-bit greyscale ("I;16", "I") becomes "L" through `image_to_8bit`; palette images become "RGBA" (a
    palette may carry transparency); bilevel "1" becomes "L"; CMYK, YCbCr, LAB, HSV, ... become "RGB".
    """
    if image.mode in ("L", "LA", "RGB", "RGBA", "F"):
        return image
    if image.mode in WIDE_IMAGE_MODES:
        return Image.fromarray(image_to_8bit(np.asarray(image)), "L")
    if image.mode in ("P", "PA"):
        return image.convert("RGBA")
    if image.mode in ("1", "La"):
        return image.convert("L" if image.mode == "1" else "LA")
    return image.convert("RGB")


def load_image(
    path_or_bytes_or_fileobj: str | os.PathLike | bytes | bytearray | BinaryIO,
    num_channels: int | None = None,
) -> Image.Image:
    """Decode an image file (path, its bytes, or an open binary file) to an 8-bit PIL image.

    Args:
        path_or_bytes_or_fileobj: a file path, the encoded bytes of a whole file, or a binary file object.
        num_channels: 1 gives mode "L" (ITU-R 601-2 luma), 3 gives "RGB"; alpha is dropped. If None the
            image keeps its channels: "L", "LA", "RGB" or "RGBA" (palette images become "RGBA", other modes
            such as CMYK become "RGB").

    Returns:
        A loaded PIL image, 8 bits per channel: 16-bit images are scaled by `image_to_8bit`.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the data is not an image PIL can read, or `num_channels` is not 1, 3 or None.
    """
    if num_channels not in (None, 1, 3):
        raise ValueError(f"`num_channels` must be 1 (greyscale), 3 (RGB) or None, got {num_channels!r}.")
    source = path_or_bytes_or_fileobj
    if isinstance(source, (bytes, bytearray)):
        source, name = io.BytesIO(source), f"<{len(source)} bytes>"
    elif isinstance(source, (str, os.PathLike)):
        source = name = os.fspath(source)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"No image file at {source!r}.")
    else:
        name = getattr(source, "name", "<file object>")
    try:
        with Image.open(source) as opened:
            opened.load()
            image = standard_mode(opened.copy())
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"Could not decode an image from {name}: {err}. Convert it to PNG first.") from err
    if image.mode == "F":  # a float file (TIFF) states no range: the rule for 32-bit integers applies
        image = Image.fromarray(image_to_8bit(np.asarray(image)), "L")
    if num_channels == 1 and image.mode != "L":
        image = image.convert("L")
    elif num_channels == 3 and image.mode != "RGB":
        image = image.convert("RGB")
    return image


def save_image(path: str | os.PathLike, image: Image.Image | np.ndarray) -> None:
    """Write a PIL image or a uint8 array (`[H, W]` or `[H, W, C]`, C = 1, 3 or 4) to `path`; the suffix
    picks the format (.png, .jpg, .webp, ...)."""
    if isinstance(image, np.ndarray):
        if (
            image.dtype != np.uint8
            or image.ndim not in (2, 3)
            or (image.ndim == 3 and image.shape[2] not in (1, 3, 4))
        ):
            raise ValueError(
                f"Expected a uint8 array shaped [H, W] or [H, W, C] with C in (1, 3, 4), got {image.dtype} "
                f"{image.shape}."
            )
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    try:
        image.save(os.fspath(path))
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(f"Cannot write {os.fspath(path)!r}: {err}; try a .png output.") from err
