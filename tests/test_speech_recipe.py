"""The shipped speech recipe (training/configs/speech.yaml, issue 15): one codec model for 1.5, 3 and 6 kbit/s
within the 15-minute budget, and a real (short) run of exactly that recipe through train_vqvae.py."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_training import _script

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "training" / "configs" / "speech.yaml"
SCRIPT = REPO / "training" / "train_vqvae.py"

needs_speech_tools = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None, reason="needs espeak-ng and flite"
)


def test_the_recipe_is_one_codec_for_three_bitrates_within_the_budget():
    args = _script("train_vqvae").parse_args(["--config", str(RECIPE), "--output_dir", "unused"])
    config, run = args.config, args.run
    assert config.uses_codec_architecture and config.hop_length == 320 and config.frame_rate == 50.0
    assert config.quantizer_type == "rvq" and config.codebook_size == 1024 and config.quantizer_dropout > 0
    per_level_kbps = config.frame_rate * math.log2(config.codebook_size) / 1000
    levels = [kbps / per_level_kbps for kbps in (1.5, 3.0, 6.0)]
    assert levels == [3, 6, 12] and config.num_quantizers == 12
    assert run.eval_num_quantizers == [3, 6, 12]  # the final evaluation reports every bitrate
    # Training stops on time; the evaluation of the held-out split fits in the rest of the 15 minutes.
    assert run.max_train_minutes <= 13.5 and run.max_steps * 0.05 > run.max_train_minutes * 60


@needs_speech_tools
def test_the_recipe_trains_and_reports_every_bitrate(tmp_path):
    """speech.yaml itself (only the corpus, the batch, the step count and the evaluated clips made small)."""
    from vq_tokenizer.speech_corpus import build_speech_corpus

    corpus = tmp_path / "corpus"
    build_speech_corpus(corpus, num_train=4, num_test=1, num_workers=1)
    output = tmp_path / "speech"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--config", str(RECIPE), "--output_dir", str(output),
         "--dataset_name", str(corpus), "--per_device_batch_size", "2", "--max_steps", "2", "--max_eval_samples", "2", "--num_threads", "1",
         "--report_to", "none", "--checkpoint_every", "0"],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["step"] == 2
    table = metrics["speech_table"]
    assert {row["levels"] for row in table} == {3, 6, 12}
    assert sorted({row["kbps"] for row in table}) == [1.5, 3.0, 6.0]
    saved = yaml.safe_load((output / "config.json").read_text())
    assert saved["encoder_strides"] == [2, 4, 5, 8] and saved["reconstruction_loss_weight"] == 0.1
    assert (saved["stft_loss_floor"], saved["mel_loss_floor"]) == (0.003, 0.0003)  # the tokenizer keeps them
    assert saved["correlation_loss_weight"] == 3.0


@needs_speech_tools
def test_a_split_smaller_than_one_batch_is_refused_not_looped_on(tmp_path):
    """4 clips and drop_last batches of 16: every epoch would be empty and the run would never end."""
    from vq_tokenizer.speech_corpus import build_speech_corpus

    corpus = tmp_path / "corpus"
    build_speech_corpus(corpus, num_train=4, num_test=1, num_workers=1)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--config", str(RECIPE), "--output_dir", str(tmp_path / "out"),
         "--dataset_name", str(corpus), "--max_steps", "2", "--report_to", "none"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert result.returncode != 0
    assert "has 4 examples, fewer than one batch of 16" in result.stderr and "--per_device_batch_size" in result.stderr
