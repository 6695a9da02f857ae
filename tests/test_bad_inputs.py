"""A table of bad inputs across the public API, the processors, checkpoints, the CLI and the training script.

Each row asserts the exception type and that the message names the problem and what to do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vq_tokenizer import VQVAEConfig, VQVAEFeatureExtractor, VQVAEImageProcessor, VQVAEModel

REPO = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=8, residual_hidden_size=4, num_residual_layers=1, codebook_size=16, codebook_dim=4)


@pytest.fixture(scope="module")
def image_model():
    return VQVAEModel(VQVAEConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def audio_model():
    return VQVAEModel(VQVAEConfig(modality="audio", hop_length=8, **TINY)).eval()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, image_model):
    folder = tmp_path_factory.mktemp("saved")
    image_model.save_pretrained(folder)
    VQVAEImageProcessor(num_channels=1).save_pretrained(folder)
    return folder


def _nan_image():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 3] = float("nan")
    return x


def _inf_image():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 1, 1] = float("inf")
    return x


# (id, callable(image_model, audio_model), exception, words that must all appear in the message)
MODEL_CASES = [
    ("image-rank-3", lambda m, a: m.encode(torch.zeros(1, 8, 8)), ValueError, ["[B, C, H, W]", "unsqueeze"]),
    ("image-channels", lambda m, a: m.encode(torch.zeros(1, 3, 8, 8)), ValueError, ["3 channels", "in_channels=1"]),
    ("image-int-dtype", lambda m, a: m.encode(torch.zeros(1, 1, 8, 8, dtype=torch.uint8)), ValueError, ["float", "processor"]),
    ("image-bool-dtype", lambda m, a: m(torch.zeros(1, 1, 8, 8, dtype=torch.bool)), ValueError, ["float"]),
    ("image-nan", lambda m, a: m.encode(_nan_image()), ValueError, ["NaN", "clean"]),
    ("image-inf", lambda m, a: m(_inf_image()), ValueError, ["inf"]),
    ("image-empty-batch", lambda m, a: m.encode(torch.zeros(0, 1, 8, 8)), ValueError, ["empty batch", "at least one"]),
    ("image-odd-size", lambda m, a: m.encode(torch.zeros(1, 1, 27, 28)), ValueError, ["multiples", "pad", "(28, 28)"]),
    ("image-zero-size", lambda m, a: m.encode(torch.zeros(1, 1, 0, 8)), ValueError, ["non-zero"]),
    ("codes-negative", lambda m, a: m.decode(torch.full((1, 2, 2), -1)), ValueError, ["[0, 15]", "-1"]),
    ("codes-too-large", lambda m, a: m.decode(torch.full((1, 2, 2), 16)), ValueError, ["[0, 15]", "codebook_size=16"]),
    ("codes-float", lambda m, a: m.decode(torch.zeros(1, 2, 2)), ValueError, ["integer", "torch.long"]),
    ("codes-wrong-rank-image", lambda m, a: m.decode(torch.zeros(1, 4, dtype=torch.long)), ValueError, ["[B, h, w]"]),
    ("codes-wrong-rank-audio", lambda m, a: a.decode(torch.zeros(1, 2, 2, dtype=torch.long)), ValueError, ["[B, t]"]),
    ("audio-rank-2", lambda m, a: a.encode(torch.zeros(1, 64)), ValueError, ["[B, C, T]", "unsqueeze"]),
    ("audio-odd-length", lambda m, a: a.encode(torch.zeros(1, 1, 63)), ValueError, ["multiples", "(64,)"]),
    ("both-inputs", lambda m, a: m(pixel_values=torch.zeros(1, 1, 8, 8), input_values=torch.zeros(1, 1, 8)), ValueError, ["not both"]),
    ("padding-mask-on-image", lambda m, a: m(torch.zeros(1, 1, 8, 8), padding_mask=torch.ones(1, 8)), ValueError, ["audio"]),
]  # fmt: skip


@pytest.mark.parametrize("case", MODEL_CASES, ids=[case[0] for case in MODEL_CASES])
def test_model_refuses_bad_input(case, image_model, audio_model):
    _, call, error, words = case
    with pytest.raises(error) as raised:
        call(image_model, audio_model)
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))


CONFIG_CASES = [
    ({"codebook_size": "512"}, ["codebook_size", "int"]),
    ({"codebook_size": 1}, ["codebook_size", "[2, "]),
    ({"downsampling_factor": 3}, ["downsampling_factor", "power of two"]),
    ({"modality": "video"}, ["modality", "image", "audio"]),
    ({"ema_decay": 1.0}, ["ema_decay", "(0.0, 1.0)"]),
    ({"codebook_update": "sgd"}, ["codebook_update", "ema"]),
    ({"codebook_lookup_dim": 128, "codebook_dim": 64}, ["codebook_lookup_dim", "[1, 64]"]),
    ({"in_channels": True}, ["in_channels", "int"]),
]


@pytest.mark.parametrize(
    "kwargs,words",
    CONFIG_CASES,
    ids=[next(iter(case[0])) + "-" + str(i) for i, case in enumerate(CONFIG_CASES)],
)
def test_config_refuses_impossible_values(kwargs, words):
    with pytest.raises(ValueError) as raised:
        VQVAEConfig(**kwargs)
    for word in words:
        assert word in str(raised.value)


def test_weights_of_another_codebook_are_refused(saved_model, tmp_path):
    other = tmp_path / "other"
    VQVAEModel(VQVAEConfig(**{**TINY, "codebook_size": 32})).save_pretrained(other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "codebook_size": 16}))
    # As transformers does: a shape mismatch is an error unless `ignore_mismatched_sizes=True` (see
    # tests/test_transformers_model_contract.py), and the message says what was saved differently.
    with pytest.raises(RuntimeError, match="do not match this VQVAEConfig"):
        VQVAEModel.from_pretrained(other)


def test_weights_of_another_dim_are_refused(tmp_path):
    folder = tmp_path / "dim"
    VQVAEModel(VQVAEConfig(**{**TINY, "codebook_dim": 8})).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "codebook_dim": 4}))
    with pytest.raises(RuntimeError, match="codebook_dim"):
        VQVAEModel.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors_is_refused(saved_model, tmp_path, damage):
    import shutil

    folder = tmp_path / damage
    shutil.copytree(saved_model, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x07" * 64)
    with pytest.raises(ValueError) as raised:
        VQVAEModel.from_pretrained(folder)
    assert "truncated or corrupt" in str(raised.value) and "force_download" in str(raised.value)


def test_pickle_bin_only_folder_is_refused_and_never_unpickled(saved_model, tmp_path):
    """The .bin holds a pickle that would create a marker file if it were ever unpickled."""
    folder = tmp_path / "pickle"
    folder.mkdir()
    (folder / "config.json").write_text((saved_model / "config.json").read_text())
    marker = tmp_path / "UNPICKLED"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"payload": Exploit()}, folder / "pytorch_model.bin")
    with pytest.raises(OSError) as raised:
        VQVAEModel.from_pretrained(folder)
    assert "safetensors" in str(raised.value) and "never unpickles" in str(raised.value)
    with pytest.raises(ValueError, match="safetensors weights only"):
        VQVAEModel.from_pretrained(saved_model, use_safetensors=False)
    assert not marker.exists()


def test_missing_processor_file_names_the_file(saved_model, tmp_path):
    folder = tmp_path / "no-processor"
    folder.mkdir()
    (folder / "config.json").write_text((saved_model / "config.json").read_text())
    with pytest.raises(OSError) as raised:
        VQVAEImageProcessor.from_pretrained(folder)
    assert "preprocessor_config.json" in str(raised.value)


PROCESSOR_CASES = [
    ("mixed-sizes", lambda: VQVAEImageProcessor(num_channels=1)([np.zeros((8, 8), np.uint8), np.zeros((9, 9), np.uint8)]), ["size="]),
    ("two-channels", lambda: VQVAEImageProcessor()(np.zeros((8, 8, 2), np.uint8)), ["channels"]),
    ("nan-image", lambda: VQVAEImageProcessor(num_channels=1)(np.full((8, 8), np.nan, np.float32)), ["NaN"]),
    ("empty-list", lambda: VQVAEImageProcessor()([]), ["empty"]),
    ("zero-samples", lambda: VQVAEFeatureExtractor()(np.zeros(0, np.float32), sampling_rate=16000), ["0 samples"]),
    ("three-channel-audio", lambda: VQVAEFeatureExtractor()(np.zeros((3, 100), np.float32), sampling_rate=16000), ["channels"]),
]  # fmt: skip


@pytest.mark.parametrize("case", PROCESSOR_CASES, ids=[case[0] for case in PROCESSOR_CASES])
def test_processors_refuse_bad_input(case):
    _, call, words = case
    with pytest.raises(ValueError) as raised:
        call()
    message = str(raised.value)
    assert any(word.lower() in message.lower() for word in words), message


def test_audio_file_with_zero_samples_is_refused(tmp_path):
    import soundfile

    from vq_tokenizer.media_io import load_audio

    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match="0 samples|no samples|empty"):
        load_audio(path)


def test_audio_file_at_another_sample_rate_is_resampled(tmp_path):
    import soundfile

    path = tmp_path / "tone.wav"
    t = np.arange(22050) / 22050
    soundfile.write(path, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 22050)
    batch = VQVAEFeatureExtractor(sampling_rate=16000, hop_length=64)(str(path), return_tensors="pt")
    assert batch["input_values"].shape[-1] == 16000 and int(batch["padding_mask"].sum()) == 16000


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vq_tokenizer.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_refuses_an_unreadable_image_file(saved_model, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    result = _cli("encode", str(broken), "-o", str(tmp_path / "codes.npy"), "--model", str(saved_model))
    assert result.returncode != 0
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr


def test_cli_refuses_an_unknown_format(saved_model, tmp_path):
    odd = tmp_path / "notes.xyz"
    odd.write_text("hello")
    result = _cli("encode", str(odd), "-o", str(tmp_path / "codes.npy"), "--model", str(saved_model))
    assert result.returncode != 0
    assert ".xyz" in result.stderr and "Traceback" not in result.stderr


def test_training_script_refuses_unknown_recipe_keys(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("learning_rat: 0.1\n")
    result = subprocess.run(
        [sys.executable, str(REPO / "training" / "train_vqvae.py"), "--config", str(recipe), "--output_dir", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown keys" in result.stderr and "learning_rat" in result.stderr


def test_training_script_refuses_bad_model_values(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "training" / "train_vqvae.py"), "--config", str(REPO / "training/configs/tiny.yaml"),
         "--output_dir", str(tmp_path / "o"), "--codebook_size", "1", "--report_to", "none"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "codebook_size" in result.stderr and "[2, " in result.stderr
