import math
import subprocess

import numpy as np
import pytest
import soundfile as sf

from vq_tokenizer.audio import convert_channels, load_audio, resample, save_audio

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
