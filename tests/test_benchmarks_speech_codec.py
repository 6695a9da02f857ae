"""Smoke run of benchmarks/speech_codec.py (issue 15): a tiny RVQ recipe on a tiny speech corpus, ours trained
by train_vqvae.py's main() and the size-matched EnCodec peer, a few steps each; rows for every bitrate and group."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml
from test_benchmarks import run_script

REPO = Path(__file__).resolve().parents[1]
needs_speech_tools = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None, reason="needs espeak-ng and flite"
)

TINY_RVQ = dict(
    modality="audio",
    in_channels=1,
    sampling_rate=16000,
    quantizer_type="rvq",
    num_quantizers=4,
    codebook_size=16,
    codebook_dim=8,
    hop_length=64,  # 250 frames/s x 4 bits: 1 kbit/s a level
    hidden_size=8,
    residual_hidden_size=4,
    num_residual_layers=1,
    kmeans_iters=3,
    reconstruction_loss="l1",
    correlation_loss_weight=2.0,
)


@needs_speech_tools
def test_speech_codec_benchmark_smoke(tmp_path):
    from vq_tokenizer.speech_corpus import build_speech_corpus

    corpus = tmp_path / "corpus"
    build_speech_corpus(corpus, num_train=4, num_test=1)  # + the ALSA recordings: every clip group
    recipe = {
        "dataset_name": str(corpus),
        "audio_crop_seconds": 0.25,
        "per_device_batch_size": 2,
        "eval_batch_size": 4,
        "learning_rate": 0.002,
        "lr_schedule": "cosine",
        "warmup_steps": 1,
        "max_steps": 1000,
        "max_train_minutes": 2.0,
        "log_every": 1,
        "seed": 0,
        "model": TINY_RVQ,
    }
    recipe_path = tmp_path / "speech_tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    rows_path = tmp_path / "rows.json"
    stdout, records = run_script(
        "speech_codec",
        ["--recipe", str(recipe_path), "--max_steps", "3", "--peer_size", "matched", "--threads", "1",
         "--output_dir", str(tmp_path / "out"), "--json", str(rows_path)],
        tmp_path,
    )  # fmt: skip
    rows = json.loads(rows_path.read_text())["rows"]
    assert len(records) == len(rows)
    groups = {"synthetic", "recorded", "noise"}
    for model in ("ours", "encodec-matched"):
        mine = [row for row in rows if row["model"] == model]
        assert {(row["target_kbps"], row["group"]) for row in mine} == {
            (kbps, group) for kbps in (1.5, 3.0, 6.0) for group in groups
        }
        assert all(row["steps"] == 3 and row["parameters"] > 0 for row in mine)
        assert all(row["si_snr"] == row["si_snr"] and 0 <= row["stoi"] <= 1 for row in mine)  # finite
    ours = {row["target_kbps"]: row for row in rows if row["model"] == "ours"}
    # 1 kbit/s a level: 1.5 -> 1 level, 3 -> 3, 6 -> all 4.
    assert [(ours[k]["levels"], ours[k]["kbps"]) for k in (1.5, 3.0, 6.0)] == [(1, 1.0), (3, 3.0), (4, 4.0)]
    peer = {row["target_kbps"]: row for row in rows if row["model"] == "encodec-matched"}
    assert [peer[k]["levels"] for k in (1.5, 3.0, 6.0)] == [3, 6, 12]
    assert "| model" in stdout and "encodec-matched: " in stdout and "x multi-resolution STFT" in stdout
    # The peer learns with the recipe's losses (no mel loss in this one, a waveform-correlation term) and its
    # dead-code threshold (1.0).
    assert all("mel" not in row["losses"] and row["dead_code_threshold"] == 1.0 for row in peer.values())
    assert all("2 x waveform correlation" in row["losses"] for row in peer.values())


def _speech_codec_module():
    spec = importlib.util.spec_from_file_location("speech_codec", REPO / "benchmarks" / "speech_codec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peer_codebook_rules_send_every_levels_commitment_to_the_encoder():
    """The port of EnCodec's residual quantizer as audiocraft fixed it: numerically the sum of each level's
    nearest code, straight-through once; every level's commitment reaches the latents (with each level's
    straight-through output subtracted, only the first level's would)."""
    import torch
    from transformers import EncodecModel

    bench = _speech_codec_module()
    torch.manual_seed(0)
    peer = EncodecModel(bench.peer_config(num_filters=2))
    rules = bench.EncodecCodebookTraining(peer.quantizer, torch.Generator().manual_seed(0), 0.0)
    dim = peer.config.hidden_size
    latents = torch.randn(2, dim, 600)
    frames = torch.ones(2, 600, dtype=torch.bool)
    rules(latents, 3, frames)  # k-means on the first batch
    books = [book.embed.clone() for book in rules.codebooks[:3]]
    latents = (torch.randn(2, dim, 50) * 1.5).requires_grad_()
    quantized, commitment = rules(latents, 3, frames[:, :50])
    residual, expected_sum, expected_grad = latents.detach().transpose(1, 2).reshape(-1, dim), 0, 0
    for book in books:  # the codes as they were before this step's update
        code = book[torch.cdist(residual, book).argmin(dim=1)]
        expected_grad = expected_grad + 2 * (residual - code) / (residual.numel() * 3)
        expected_sum, residual = expected_sum + code, residual - code
    torch.testing.assert_close(quantized.transpose(1, 2).reshape(-1, dim), expected_sum)
    (gradient,) = torch.autograd.grad(commitment, latents, retain_graph=True)
    torch.testing.assert_close(gradient.transpose(1, 2).reshape(-1, dim), expected_grad)
    (through,) = torch.autograd.grad(quantized.sum(), latents)
    torch.testing.assert_close(through, torch.ones_like(through))  # straight-through to the decoder
