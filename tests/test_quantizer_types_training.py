"""The training script with 2 real processes (accelerate, CPU) for each quantizer type of issue 13, on the tiny
recipe: every process ends with the same quantizer state (parameters and buffers), as `"vq"` does in
tests/test_training.py."""

from __future__ import annotations

import json

import pytest
import yaml
from test_training import TINY, run_training

TYPE_MODELS = {
    "gumbel": {"quantizer_type": "gumbel", "gumbel_anneal_steps": 4},
    "rvq": {"quantizer_type": "rvq", "num_quantizers": 3, "quantizer_dropout": 0.5},
    "fsq": {"quantizer_type": "fsq", "fsq_levels": [4, 4, 2]},
}


@pytest.mark.parametrize("name", list(TYPE_MODELS))
def test_two_processes_end_with_identical_quantizer_state(tmp_path, name):
    recipe = yaml.safe_load(TINY.read_text())
    recipe["model"].update(TYPE_MODELS[name])
    if name == "fsq":
        recipe["model"].pop("codebook_size")  # derived from the levels
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "ddp"
    run_training(
        out, "--config", str(path), "--max_steps", "6", "--eval_every", "0", "--checkpoint_every", "0",
        processes=2,
    )  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["step"] == 6
    assert metrics["codebook_synchronized"] is True
    assert 0 < metrics["codebook_usage"] <= 1
    saved = json.loads((out / "config.json").read_text())
    assert saved["quantizer_type"] == name
