"""Audio end to end: the loss ignores padding, and the training script learns from real synthesised speech."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vq_tokenizer import VQVAEConfig, VQVAEFeatureExtractor, VQVAEModel
from vq_tokenizer.cli import main as cli_main
from vq_tokenizer.media_io import load_audio
from vq_tokenizer.modeling_vqvae import multi_resolution_stft_loss

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "train_vqvae.py"
HOP = 16
# The small audio model these tests train and compare (in-process and through the training script).
TINY_AUDIO = dict(
    modality="audio",
    hidden_size=32,
    residual_hidden_size=16,
    num_residual_layers=1,
    hop_length=HOP,
    codebook_size=64,
    codebook_dim=16,
)
FFT_SIZES = [256, 512, 1024]

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
needs_speech_tools = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None, reason="needs espeak-ng and flite"
)


@pytest.fixture(scope="module")
def utterances(tmp_path_factory) -> list[np.ndarray]:
    """Two real espeak-ng utterances at 16 kHz (1-D float32), the second longer than the first."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    folder = tmp_path_factory.mktemp("espeak")
    waveforms = []
    for index, text in enumerate(
        ["Seven quiet bridges.", "The careful painter repaired the wooden bicycle."]
    ):
        path = folder / f"{index}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
        waveforms.append(load_audio(path, sampling_rate=16000, num_channels=1)[0][0])
    assert len(waveforms[0]) + 4 * HOP < len(waveforms[1])
    return waveforms


def _audio_model(**overrides) -> VQVAEModel:
    torch.manual_seed(0)
    return VQVAEModel(VQVAEConfig(**{**TINY_AUDIO, **overrides})).eval()


def test_stft_loss_ignores_what_the_padding_holds(utterances):
    short, long = (torch.from_numpy(u) for u in utterances)
    generator = torch.Generator().manual_seed(0)
    length = len(long)
    target = torch.zeros(2, 1, length)
    target[0, 0, : len(short)], target[1, 0] = short, long
    reconstruction = target + 0.05 * torch.randn(target.shape, generator=generator)
    mask = torch.zeros(2, length, dtype=torch.long)
    mask[0, : len(short)], mask[1] = 1, 1

    loss = multi_resolution_stft_loss(reconstruction, target, FFT_SIZES, mask)
    garbage = reconstruction.clone()
    garbage[0, 0, len(short) :] = torch.randn(length - len(short), generator=generator)
    garbage_target = target.clone()
    garbage_target[0, 0, len(short) :] = 3.0
    assert multi_resolution_stft_loss(garbage, garbage_target, FFT_SIZES, mask).item() == pytest.approx(
        loss.item(), rel=1e-6
    )
    # Batch of one: the item padded to the long length (padding full of noise) scores as it does alone.
    alone = multi_resolution_stft_loss(
        reconstruction[:1, :, : len(short)], target[:1, :, : len(short)], FFT_SIZES
    )
    padded = multi_resolution_stft_loss(garbage[:1], garbage_target[:1], FFT_SIZES, mask[:1])
    assert padded.item() == pytest.approx(alone.item(), rel=1e-6)
    assert padded.item() != pytest.approx(loss.item(), rel=1e-3)  # the long item does count in the batch


def test_model_loss_is_the_same_for_an_item_alone_and_padded_in_a_batch(utterances):
    """The feature extractor pads; the model's waveform and STFT losses read only the real samples.

    What remains is the convolutions' reach: the last real samples are decoded from a neighbourhood that
    holds padding frames in the batch and the convolutions' own zero padding alone. That moves the waveform
    L1 by ~1e-7 and the log-magnitude STFT term (sensitive in the clip's silent tail) by <1%; before the STFT
    loss cut items to their real samples, the padded item scored 27% lower. (The quantizer's commitment loss
    is not masked: it averages over padding frames too, so it is diluted by padding.)
    """
    extractor = VQVAEFeatureExtractor(hop_length=HOP)
    short, long = utterances
    alone = extractor(short, sampling_rate=16000, return_tensors="pt")
    # In a batch padded to the long utterance's length (plus more: 'max_length' rounds up to the hop).
    batch = extractor(
        [short, short],
        sampling_rate=16000,
        padding="max_length",
        max_length=len(long) + 7,
        return_tensors="pt",
    )
    assert batch["input_values"].shape[-1] > alone["input_values"].shape[-1] + 4 * HOP
    assert batch["padding_mask"][0].sum() == alone["padding_mask"][0].sum() == len(short)
    for stft_weight, tolerance in ((0.0, 1e-5), (1.0, 1e-2)):
        model = _audio_model(stft_loss_weight=stft_weight)
        with torch.no_grad():
            one, two = model(**alone), model(**batch)
            unmasked = model(input_values=batch["input_values"])
        assert two.reconstruction_loss.item() == pytest.approx(one.reconstruction_loss.item(), rel=tolerance)
        # Without the mask the padding counts, and the same batch scores clearly differently.
        masked_gap = abs(two.reconstruction_loss.item() - one.reconstruction_loss.item())
        unmasked_gap = abs(unmasked.reconstruction_loss.item() - one.reconstruction_loss.item())
        assert unmasked_gap > 5 * masked_gap


def test_stereo_and_any_length_train_step(utterances):
    """Stereo input of a length that is no multiple of the hop: pad, mask, one optimiser step, finite loss."""
    model = _audio_model(in_channels=2).train()
    extractor = VQVAEFeatureExtractor(feature_size=2, hop_length=HOP)
    short, long = utterances
    stereo = np.stack([short, 0.5 * short])
    batch = extractor([stereo, long[: len(short) + 5]], sampling_rate=16000, return_tensors="pt")
    assert batch["input_values"].shape[1] == 2 and batch["input_values"].shape[-1] % HOP == 0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    output = model(**batch)
    output.loss.backward()
    optimizer.step()
    assert torch.isfinite(output.loss)
    assert output.codes.shape == (2, batch["input_values"].shape[-1] // HOP)


@needs_speech_tools
def test_tiny_speech_training_beats_the_untrained_model(tmp_path, capsys):
    """train_vqvae.py (a subprocess) on the tiny real speech corpus; trained vs untrained on the same clips."""
    from vq_tokenizer.speech_corpus import build_speech_corpus

    corpus = tmp_path / "corpus"
    build_speech_corpus(corpus, num_train=8, num_test=4)
    model_settings = {**TINY_AUDIO, "in_channels": 1, "stft_loss_weight": 0.02}
    recipe = {
        "dataset_name": str(corpus),
        "audio_crop_seconds": 0.5,
        "per_device_batch_size": 4,
        "eval_batch_size": 16,
        "learning_rate": 0.002,
        "max_steps": 40,
        "log_every": 10,
        "report_to": "none",
        "seed": 0,
        "model": model_settings,
    }
    config_path = tmp_path / "speech_tiny.yaml"
    config_path.write_text(yaml.safe_dump(recipe))
    trained = tmp_path / "trained"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--config", str(config_path), "--output_dir", str(trained)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "si_snr=" in result.stdout and "tokens_per_second=1000" in result.stdout
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["num_eval_items"] == 4 + len(list(Path("/usr/share/sounds/alsa").glob("*.wav")))
    assert metrics["tokens_per_second"] == 16000 / HOP
    assert 0 < metrics["codebook_usage"] <= 1 and metrics["perplexity"] >= 1
    assert (trained / "spectrogram.png").stat().st_size > 10_000
    card = (trained / "README.md").read_text()
    assert "SI-SNR" in card and "spectrogram.png" in card

    # The untrained model: same config, fresh weights, saved with the same feature extractor.
    untrained = tmp_path / "untrained"
    torch.manual_seed(0)
    VQVAEModel(VQVAEConfig.from_pretrained(trained)).save_pretrained(untrained)
    VQVAEFeatureExtractor.from_pretrained(trained).save_pretrained(untrained)
    figures = {}
    for name, folder in (("trained", trained), ("untrained", untrained)):
        out = tmp_path / f"{name}.json"
        assert cli_main(["eval", "--model", str(folder), "--dataset", str(corpus), "--json", str(out)]) == 0
        figures[name] = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "SI-SNR (dB):" in printed and "tokens per second:" in printed
    # The CLI runs the same evaluation as the training script, on the same held-out clips.
    assert figures["trained"]["si_snr"] == pytest.approx(metrics["si_snr"], abs=0.05)
    assert figures["trained"]["si_snr"] > figures["untrained"]["si_snr"] + 3.0, figures


@needs_speech_tools
def test_rvq_speech_run_reports_each_bitrate_and_leaves_examples_beside_the_card(tmp_path):
    """train_vqvae.py with `eval_num_quantizers`: the final evaluation's table, WAVs and pictures land in
    the output folder, and the card written there links them."""
    from vq_tokenizer.speech_corpus import build_speech_corpus

    corpus = tmp_path / "corpus"
    build_speech_corpus(corpus, num_train=4, num_test=2, num_workers=1)
    recipe = {
        "dataset_name": str(corpus),
        "audio_crop_seconds": 0.25,
        "per_device_batch_size": 4,
        "eval_batch_size": 4,
        "max_steps": 3,
        "report_to": "none",
        "eval_num_quantizers": [1, 4],
        "model": {**TINY_AUDIO, "in_channels": 1, "quantizer_type": "rvq", "num_quantizers": 4},
    }
    config_path = tmp_path / "rvq.yaml"
    config_path.write_text(yaml.safe_dump(recipe))
    output = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--config", str(config_path), "--output_dir", str(output)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((output / "metrics.json").read_text())
    rows = {(row["levels"], row["group"]): row for row in metrics["speech_table"]}
    assert set(rows) == {(n, g) for n in (1, 4) for g in ("all", "synthetic", "recorded", "noise")}
    assert rows[(4, "all")]["kbps"] == 1000 * 4 * 6 / 1000 and rows[(1, "synthetic")]["items"] == 2
    assert rows[(4, "all")]["stoi"] == metrics["stoi"]
    index = json.loads((output / "examples" / "examples.json").read_text())
    assert [clip["group"] for clip in index["clips"]] == ["synthetic", "recorded", "noise"]
    card = (output / "README.md").read_text()
    assert "](spectrogram_levels.png)" in card and (output / "spectrogram_levels.png").is_file()
    for clip in index["clips"]:
        for link in [clip["original"], *(decoded["path"] for decoded in clip["decoded"])]:
            assert f"]({link})" in card and (output / link).is_file()
