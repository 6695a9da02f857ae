"""media_io: audio and image files in and out, resampling, channel conversion, the 16-bit policy."""

import math
import subprocess

import numpy as np
import pytest
import soundfile as sf

from vq_tokenizer.media_io import (
    convert_channels,
    decode_audio_example,
    image_to_8bit,
    load_audio,
    load_image,
    resample,
    save_audio,
    save_image,
)

ALSA_WAV = "/usr/share/sounds/alsa/Front_Center.wav"  # 48 kHz mono PCM_16, 68545 frames


def espeak_wav_bytes(text: str = "The quick brown fox jumps over the lazy dog.") -> bytes:
    return subprocess.run(
        ["espeak-ng", "-v", "en-us", "--stdout"], input=text.encode(), capture_output=True, check=True
    ).stdout


def peak_frequency(signal: np.ndarray, sampling_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / sampling_rate)[np.argmax(spectrum)])


def test_load_real_recording_matches_soundfile():
    array, rate = load_audio(ALSA_WAV)
    expected, expected_rate = sf.read(ALSA_WAV, dtype="float32")
    assert rate == expected_rate == 48000
    assert array.dtype == np.float32 and array.shape == (1, len(expected))
    np.testing.assert_array_equal(array[0], expected)


def test_load_resamples_to_exact_length_and_keeps_the_signal():
    native, _ = load_audio(ALSA_WAV)
    array, rate = load_audio(ALSA_WAV, sampling_rate=16000)
    assert rate == 16000
    assert array.shape == (1, math.ceil(native.shape[1] / 3))
    assert np.abs(array).max() <= 1.0
    # Decimating by 3 keeps the speech band: the 16 kHz signal tracks every third 48 kHz sample.
    correlation = np.corrcoef(array[0, 100:-100], native[0, 300:-300:3])[0, 1]
    assert correlation > 0.95


def test_load_bytes_equals_load_path():
    from_path, rate_path = load_audio(ALSA_WAV)
    with open(ALSA_WAV, "rb") as handle:
        from_bytes, rate_bytes = load_audio(handle.read())
    assert rate_path == rate_bytes
    np.testing.assert_array_equal(from_path, from_bytes)


def test_resample_espeak_utterance_keeps_duration_within_one_sample():
    speech, rate = load_audio(espeak_wav_bytes())
    assert rate == 22050
    out = resample(speech, 22050, 16000)
    assert out.dtype == np.float32
    assert abs(out.shape[-1] - speech.shape[-1] * 16000 / 22050) <= 1
    # Same loudness: the energy per second is unchanged.
    assert np.mean(out**2) == pytest.approx(np.mean(speech**2), rel=0.05)


def test_resample_preserves_sine_frequency():
    t = np.arange(22050 * 2) / 22050
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    out = resample(tone, 22050, 16000)
    assert abs(peak_frequency(out, 16000) - 440.0) < 1.0
    assert resample(tone, 16000, 16000) is tone


@pytest.mark.parametrize("bad_rate", [0, -16000, 16000.5, "16000", None])
def test_resample_rejects_bad_rates(bad_rate):
    with pytest.raises(ValueError, match="positive integer"):
        resample(np.zeros(10, dtype=np.float32), bad_rate, 16000)


def test_channel_conversion():
    left = np.linspace(-0.5, 0.5, 100, dtype=np.float32)
    stereo = np.stack([left, -0.5 * left])
    np.testing.assert_allclose(convert_channels(stereo, 1)[0], 0.25 * left, atol=1e-7)
    np.testing.assert_array_equal(convert_channels(left[None], 2), np.stack([left, left]))
    with pytest.raises(ValueError, match="Downmix"):
        convert_channels(np.zeros((4, 10), dtype=np.float32), 2)


def test_save_load_round_trip_stereo_wav_flac_ogg(tmp_path):
    t = np.arange(16000) / 16000
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 300 * t), 0.3 * np.sin(2 * np.pi * 700 * t)]).astype(
        np.float32
    )

    save_audio(tmp_path / "float.wav", stereo, 16000, subtype="FLOAT")
    array, rate = load_audio(tmp_path / "float.wav")
    assert rate == 16000
    np.testing.assert_array_equal(array, stereo)

    save_audio(tmp_path / "clip.flac", stereo, 16000)
    array, _ = load_audio(tmp_path / "clip.flac")
    np.testing.assert_allclose(array, stereo, atol=1 / 2**15)

    mono, _ = load_audio(tmp_path / "clip.flac", num_channels=1)
    np.testing.assert_allclose(mono[0], stereo.mean(0), atol=1 / 2**15)

    save_audio(tmp_path / "clip.ogg", stereo, 16000)  # lossy: same length, same tones
    array, _ = load_audio(tmp_path / "clip.ogg")
    assert array.shape == stereo.shape
    assert abs(peak_frequency(array[1], 16000) - 700.0) < 2.0


def test_unreadable_file_names_formats_and_fix(tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not audio")
    with pytest.raises(ValueError, match=r"(?s)Could not decode.*WAV.*FLAC.*OGG.*ffmpeg"):
        load_audio(not_audio)
    with pytest.raises(ValueError, match="Could not decode"):
        load_audio(b"RIFF but not really")
    with pytest.raises(FileNotFoundError, match="No audio file"):
        load_audio(tmp_path / "missing.wav")


def test_empty_and_nan_files_are_refused(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="0 samples"):
        load_audio(tmp_path / "empty.wav")
    bad = np.zeros(100, dtype=np.float32)
    bad[10] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="NaN"):
        load_audio(tmp_path / "nan.wav")


def test_save_audio_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"suffix.*\.wav"):
        save_audio(tmp_path / "clip.xyz", np.zeros((1, 10)), 16000)
    with pytest.raises(ValueError, match="NaN"):
        save_audio(tmp_path / "clip.wav", np.full((1, 10), np.nan), 16000)
    with pytest.raises(ValueError, match=r"\[C, T\]"):
        save_audio(tmp_path / "clip.wav", np.zeros((1, 1, 10)), 16000)


# ------------------------------------------------------------------------------------ dataset audio cells


def test_decode_audio_example_reads_every_cell_kind_alike(tmp_path):
    expected, rate = load_audio(ALSA_WAV)
    with open(ALSA_WAV, "rb") as handle:
        encoded = handle.read()
    cells = [ALSA_WAV, encoded, {"bytes": encoded, "path": None}, {"bytes": None, "path": ALSA_WAV}]
    for cell in cells:
        array, cell_rate = decode_audio_example(cell, sampling_rate=16000)  # a file's own rate wins
        assert cell_rate == rate == 48000
        np.testing.assert_array_equal(array, expected)

    array, cell_rate = decode_audio_example({"array": expected[0].tolist(), "sampling_rate": 48000})
    assert cell_rate == 48000 and array.shape == expected.shape and array.dtype == np.float32
    array, cell_rate = decode_audio_example(expected[0], 48000)  # a bare array takes the given rate
    assert cell_rate == 48000
    np.testing.assert_array_equal(array, expected)
    pcm = (expected * 32768).round().astype(np.int16)  # int16 PCM is scaled as soundfile decodes it
    np.testing.assert_array_equal(decode_audio_example(pcm)[0], expected)
    assert decode_audio_example(np.zeros((2, 5)))[1] is None


@pytest.mark.parametrize(
    ("cell", "error", "message"),
    [
        (b"not audio at all", ValueError, "Could not decode"),
        ("/no/such/file.wav", FileNotFoundError, "No audio file"),
        ({"bytes": None, "path": None}, ValueError, "none of 'array', 'bytes' or 'path'"),
        (np.array([0.1, np.nan], dtype=np.float32), ValueError, "NaN"),
        (np.zeros(0, dtype=np.float32), ValueError, "0 samples"),
        (np.zeros((1, 2, 3), dtype=np.float32), ValueError, "expected \\[T\\]"),
        (np.array(["a", "b"]), ValueError, "dtype"),
        ({"array": [0.0, 0.1], "sampling_rate": -5}, ValueError, "positive integer"),
    ],
)
def test_decode_audio_example_refuses_bad_cells(cell, error, message):
    with pytest.raises(error, match=message):
        decode_audio_example(cell)


# --------------------------------------------------------------------------------------------------- images


def test_image_round_trip_through_path_bytes_and_file_object(tmp_path):
    from skimage import data

    astronaut = data.astronaut()
    save_image(tmp_path / "astronaut.png", astronaut)
    by_path = load_image(tmp_path / "astronaut.png")
    assert by_path.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(by_path), astronaut)
    encoded = (tmp_path / "astronaut.png").read_bytes()
    np.testing.assert_array_equal(np.asarray(load_image(encoded)), astronaut)
    with open(tmp_path / "astronaut.png", "rb") as handle:
        np.testing.assert_array_equal(np.asarray(load_image(handle)), astronaut)

    from PIL import Image

    gray = load_image(tmp_path / "astronaut.png", num_channels=1)
    assert gray.mode == "L"
    np.testing.assert_array_equal(np.asarray(gray), np.asarray(Image.fromarray(astronaut).convert("L")))
    rgba = np.concatenate([astronaut, np.full((*astronaut.shape[:2], 1), 9, np.uint8)], axis=-1)
    save_image(tmp_path / "rgba.png", Image.fromarray(rgba))
    assert load_image(tmp_path / "rgba.png").mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "rgba.png", num_channels=3)), astronaut)


def test_sixteen_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    from PIL import Image
    from skimage import data

    camera = data.camera()
    Image.fromarray(camera.astype(np.uint16) * 257).save(tmp_path / "camera16.png")
    assert Image.open(tmp_path / "camera16.png").mode == "I;16"
    image = load_image(tmp_path / "camera16.png")
    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), camera)
    assert load_image(tmp_path / "camera16.png", num_channels=3).mode == "RGB"

    # 16-bit by type: always divided by 257. Width unknown (int32, float): 16-bit only if above 255.
    np.testing.assert_array_equal(image_to_8bit(np.array([0, 128, 65535], np.uint16)), [0, 0, 255])
    np.testing.assert_array_equal(image_to_8bit(np.array([0, 128, 200], np.int32)), [0, 128, 200])
    np.testing.assert_array_equal(image_to_8bit(np.array([0, 257 * 128, 65535], np.int32)), [0, 128, 255])


def test_bad_image_files_say_what_is_wrong(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="Could not decode an image.*PNG"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(ValueError, match="Could not decode an image"):
        load_image(b"\x89PNG but truncated")
    with pytest.raises(FileNotFoundError, match="No image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="num_channels"):
        load_image(tmp_path / "notes.png", num_channels=2)
    with pytest.raises(ValueError, match=r"try a \.png"):
        save_image(tmp_path / "out.unknown", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8 array"):
        save_image(tmp_path / "out.png", np.zeros((4, 4), np.float32))
