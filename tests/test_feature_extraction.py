import json
import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers.testing_utils import CaptureLogger

from vq_tokenizer import feature_extraction_vqvae
from vq_tokenizer.feature_extraction_vqvae import VQVAEFeatureExtractor
from vq_tokenizer.media_io import load_audio

HOP = 64
ALSA_WAV = "/usr/share/sounds/alsa/Front_Left.wav"  # 48 kHz mono, 71042 frames


@pytest.fixture(scope="module")
def espeak_speech() -> np.ndarray:
    """A real espeak-ng utterance at its native 22050 Hz, mono [T]."""
    wav = subprocess.run(
        ["espeak-ng", "-v", "en-gb+f3", "--stdout"],
        input=b"Tokenizers turn sound into codes.",
        capture_output=True,
        check=True,
    ).stdout
    array, rate = load_audio(wav)
    assert rate == 22050
    return array[0]


def peak_frequency(signal: np.ndarray, sampling_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / sampling_rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("length", [1, HOP - 1, HOP, HOP + 1])
def test_single_item_is_padded_to_next_multiple_of_hop(length, espeak_speech):
    extractor = VQVAEFeatureExtractor(hop_length=HOP)
    clip = espeak_speech[2000 : 2000 + length]
    batch = extractor(clip, sampling_rate=16000, return_tensors="pt")
    padded = math.ceil(length / HOP) * HOP
    assert batch["input_values"].shape == (1, 1, padded)
    assert batch["input_values"].dtype == torch.float32
    assert batch["padding_mask"].dtype == torch.int64
    assert batch["padding_mask"][0].tolist() == [1] * length + [0] * (padded - length)
    np.testing.assert_array_equal(batch["input_values"][0, 0, :length].numpy(), clip)
    assert not batch["input_values"][0, 0, length:].any()


def test_batch_padding_masking_and_postprocess_are_exact(espeak_speech):
    extractor = VQVAEFeatureExtractor(hop_length=HOP)
    lengths = [1, HOP - 1, HOP, HOP + 1]
    clips = [espeak_speech[3000 : 3000 + n] for n in lengths]
    batch = extractor(clips, sampling_rate=16000)
    assert isinstance(batch["input_values"], np.ndarray)
    assert batch["input_values"].shape == (4, 1, 2 * HOP)
    assert batch["padding_mask"].shape == (4, 2 * HOP)
    assert batch["padding_mask"].sum(-1).tolist() == lengths
    restored = extractor.postprocess(batch["input_values"], batch["padding_mask"])
    assert [r.shape for r in restored] == [(1, n) for n in lengths]
    for clip, back in zip(clips, restored, strict=True):
        np.testing.assert_array_equal(back[0], clip)
    # Torch in, numpy out; without a mask nothing is trimmed.
    untrimmed = extractor.postprocess(torch.from_numpy(batch["input_values"]))
    assert [u.shape for u in untrimmed] == [(1, 2 * HOP)] * 4


def test_max_length_padding_and_truncation():
    extractor = VQVAEFeatureExtractor(hop_length=HOP)
    clips = [np.full(100, 0.1, dtype=np.float32), np.full(300, 0.2, dtype=np.float32)]
    batch = extractor(clips, sampling_rate=16000, padding="max_length", max_length=200, truncation=True)
    assert batch["input_values"].shape == (2, 1, 256)  # max_length is rounded up to a multiple of the hop
    assert batch["padding_mask"].sum(-1).tolist() == [100, 256]
    with pytest.raises(ValueError, match="truncation=True"):
        extractor(clips, sampling_rate=16000, padding="max_length", max_length=200)


def test_no_padding_keeps_lengths():
    extractor = VQVAEFeatureExtractor(hop_length=HOP)
    clips = [np.zeros(100, dtype=np.float32), np.zeros(20, dtype=np.float32)]
    batch = extractor(clips, sampling_rate=16000, padding=False)
    assert [v.shape for v in batch["input_values"]] == [(1, 100), (1, 20)]
    with pytest.raises(ValueError, match="padding=True"):
        extractor(clips, sampling_rate=16000, padding=False, return_tensors="pt")


def test_resampling_espeak_utterance_keeps_duration_within_one_sample(espeak_speech):
    extractor = VQVAEFeatureExtractor(hop_length=HOP)
    with CaptureLogger(feature_extraction_vqvae.logger) as captured:
        batch = extractor(espeak_speech, sampling_rate=22050)
    assert "recommended" not in captured.out
    real = int(batch["padding_mask"].sum())
    assert abs(real - len(espeak_speech) * 16000 / 22050) <= 1
    assert batch["input_values"].shape[-1] % HOP == 0


def test_resampling_preserves_sine_frequency():
    t = np.arange(22050) / 22050
    tone = 0.5 * np.sin(2 * np.pi * 523.25 * t)  # float64 in, float32 out
    batch = VQVAEFeatureExtractor(hop_length=HOP)(tone, sampling_rate=22050)
    out = batch["input_values"][0, 0, : int(batch["padding_mask"].sum())]
    assert out.dtype == np.float32
    assert abs(peak_frequency(out, 16000) - 523.25) < 1.5


def test_missing_sampling_rate_warns_like_transformers():
    extractor = VQVAEFeatureExtractor(hop_length=HOP)
    with CaptureLogger(feature_extraction_vqvae.logger) as captured:
        extractor(np.zeros(10, dtype=np.float32))
    assert "strongly recommended to pass the `sampling_rate`" in captured.out


def test_stereo_to_mono_and_mono_to_stereo(espeak_speech):
    clip = espeak_speech[:1000]
    stereo = np.stack([clip, 0.5 * clip])
    mono = VQVAEFeatureExtractor(feature_size=1, hop_length=HOP)(
        torch.from_numpy(stereo), sampling_rate=16000
    )
    np.testing.assert_allclose(mono["input_values"][0, 0, :1000], 0.75 * clip, atol=1e-7)

    to_stereo = VQVAEFeatureExtractor(feature_size=2, hop_length=HOP)
    batch = to_stereo([clip, stereo], sampling_rate=16000, return_tensors="pt")
    assert batch["input_values"].shape == (2, 2, 1024)
    np.testing.assert_array_equal(batch["input_values"][0, 0, :1000], clip)
    np.testing.assert_array_equal(batch["input_values"][0, 1, :1000], clip)
    np.testing.assert_array_equal(batch["input_values"][1, 1, :1000], 0.5 * clip)
    restored = to_stereo.postprocess(batch["input_values"], batch["padding_mask"])
    np.testing.assert_array_equal(restored[1], stereo)


def test_file_paths_and_bytes_are_loaded_and_resampled(tmp_path):
    extractor = VQVAEFeatureExtractor(feature_size=2, hop_length=HOP)
    stereo_path = tmp_path / "stereo.flac"
    sf.write(stereo_path, np.stack([np.full(4800, 0.25), np.full(4800, -0.25)], axis=1), 48000)
    with open(ALSA_WAV, "rb") as handle:
        alsa_bytes = handle.read()
    with CaptureLogger(feature_extraction_vqvae.logger) as captured:
        batch = extractor([ALSA_WAV, alsa_bytes, stereo_path])
    assert "recommended" not in captured.out  # files carry their own rate
    assert batch["padding_mask"].sum(-1).tolist() == [math.ceil(71042 / 3)] * 2 + [1600]
    np.testing.assert_array_equal(batch["input_values"][0], batch["input_values"][1])
    np.testing.assert_array_equal(batch["input_values"][0, 0], batch["input_values"][0, 1])  # mono duplicated
    np.testing.assert_allclose(batch["input_values"][2, :, 100:1500].mean(-1), [0.25, -0.25], atol=1e-3)


def test_int16_pcm_is_scaled():
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    batch = VQVAEFeatureExtractor(hop_length=4)(pcm, sampling_rate=16000)
    np.testing.assert_allclose(batch["input_values"][0, 0], [0.0, 0.5, -1.0, 32767 / 32768])


def test_save_load_round_trip(tmp_path, espeak_speech):
    extractor = VQVAEFeatureExtractor(
        feature_size=2, sampling_rate=24000, hop_length=128, padding_value=0.0, return_padding_mask=False
    )
    extractor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["feature_extractor_type"] == "VQVAEFeatureExtractor"
    assert saved["hop_length"] == 128 and saved["sampling_rate"] == 24000 and saved["feature_size"] == 2
    reloaded = VQVAEFeatureExtractor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == extractor.to_dict()
    first = extractor(espeak_speech, sampling_rate=22050)
    second = reloaded(espeak_speech, sampling_rate=22050)
    assert "padding_mask" not in second
    np.testing.assert_array_equal(first["input_values"], second["input_values"])


@pytest.mark.parametrize(
    "raw_audio, message",
    [
        (np.zeros(0, dtype=np.float32), r"0 samples; remove empty clips"),
        (np.array([0.1, np.nan], dtype=np.float32), r"NaN or infinite.*clean or drop"),
        (np.array([0.1, np.inf], dtype=np.float32), r"NaN or infinite"),
        (np.zeros((3, 100), dtype=np.float32), r"3 channels.*only mono and stereo.*Downmix"),
        (np.zeros((100, 2), dtype=np.float32), r"looks like \[T, C\].*array\.T"),
        (np.zeros((1, 1, 1, 10), dtype=np.float32), r"4-D.*expected \[T\].*\[C, T\]"),
        (np.array(0.5, dtype=np.float32), r"0-D"),
        (0.5, r"type float is not supported"),
        (np.arange(10), r"integer dtype int64.*float in \[-1, 1\].*32768"),
        (np.zeros(10, dtype=bool), r"dtype bool.*float samples"),
        ([], r"empty list"),
        ({"array": np.zeros(10)}, r"not supported.*numpy array"),
    ],
)
def test_bad_inputs_name_problem_and_fix(raw_audio, message):
    with pytest.raises(ValueError, match=message):
        VQVAEFeatureExtractor(hop_length=HOP)(raw_audio, sampling_rate=16000)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="1 \\(mono\\) or 2 \\(stereo\\)"):
        VQVAEFeatureExtractor(feature_size=3)
    with pytest.raises(ValueError, match="hop_length"):
        VQVAEFeatureExtractor(hop_length=0)


def test_postprocess_checks_mask_shape():
    extractor = VQVAEFeatureExtractor(hop_length=HOP)
    with pytest.raises(ValueError, match="pass the mask returned with these inputs"):
        extractor.postprocess(np.zeros((2, 1, 64)), np.ones((2, 128)))
    clipped = extractor.postprocess(np.full((1, 64), 1.5))
    assert clipped[0].max() == 1.0


def test_three_dimensional_input_is_a_batch():
    extractor = VQVAEFeatureExtractor(feature_size=2, hop_length=HOP)
    batch = torch.rand(3, 2, 100) - 0.5
    out = extractor(batch, sampling_rate=16000, return_tensors="pt")
    assert out["input_values"].shape == (3, 2, 128)
    torch.testing.assert_close(out["input_values"][:, :, :100], batch)


REMOTE_CHILD = """
import sys

for name in ("vq_tokenizer", "scipy", "soundfile"):  # neither the package nor the audio extra
    sys.modules[name] = None
import numpy as np
from transformers import AutoFeatureExtractor

extractor = AutoFeatureExtractor.from_pretrained(sys.argv[1], trust_remote_code=True)
assert type(extractor).__module__.startswith("transformers_modules."), type(extractor).__module__
batch = extractor([np.load(sys.argv[3]), np.zeros(10, np.float32)], sampling_rate=16000)
np.savez(sys.argv[2], input_values=batch["input_values"], padding_mask=batch["padding_mask"])
"""


def test_saved_extractor_loads_as_remote_code_without_the_audio_extra(tmp_path, espeak_speech):
    import os

    extractor = VQVAEFeatureExtractor(feature_size=2, hop_length=HOP)
    extractor.save_pretrained(tmp_path / "saved")
    assert {"feature_extraction_vqvae.py", "media_io.py"} <= set(os.listdir(tmp_path / "saved"))
    clip = espeak_speech[:500]
    np.save(tmp_path / "clip.npy", clip)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    subprocess.run(
        [sys.executable, "-c", REMOTE_CHILD, str(tmp_path / "saved"), str(tmp_path / "out.npz"), str(tmp_path / "clip.npy")],
        env=env, cwd=tmp_path, check=True, timeout=300,
    )  # fmt: skip
    remote = np.load(tmp_path / "out.npz")
    local = extractor([clip, np.zeros(10, np.float32)], sampling_rate=16000)
    np.testing.assert_array_equal(remote["input_values"], local["input_values"])
    np.testing.assert_array_equal(remote["padding_mask"], local["padding_mask"])
