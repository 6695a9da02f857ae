"""Smoke run of benchmarks/speech_codec.py (issue 15): a tiny RVQ recipe on a tiny speech corpus, ours trained
by train_vqvae.py's main() and the size-matched EnCodec peer, a few steps each; rows for every bitrate and group."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from test_benchmarks import run_script

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
