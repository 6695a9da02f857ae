"""The real training script on real Fashion-MNIST images: 1 and 2 processes, resume after SIGKILL, NaN stop;
and what the scripts share (`vq_tokenizer.training`): recipe plus command line, the schedule."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vq_tokenizer import VQVAEConfig
from vq_tokenizer.training import RecipeArgumentParser, TrainingClock, TrainingSchedule

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "train_vqvae.py"
TINY = REPO / "training" / "configs" / "tiny.yaml"


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_training(output_dir: Path, *extra: str, processes: int = 1, check: bool = True, timeout: int = 600):
    if processes == 1:
        command = [sys.executable, str(SCRIPT)]
    else:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), str(SCRIPT),
        ]  # fmt: skip
    command += ["--config", str(TINY), "--output_dir", str(output_dir), "--report_to", "none", *extra]
    env = _env()
    if processes > 1:
        env["ACCELERATE_USE_CPU"] = "true"  # `--cpu --num_processes 2` would start only one process
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def _metrics(output_dir: Path) -> dict:
    return json.loads((output_dir / "metrics.json").read_text())


def test_one_process_run_leaves_a_loadable_tokenizer(tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoImageProcessor, AutoModel

    import vq_tokenizer  # noqa: F401 - registers the Auto classes

    out = tmp_path / "run"
    result = run_training(out)
    metrics = _metrics(out)
    assert metrics["step"] == 12 and metrics["num_processes"] == 1
    assert metrics["num_eval_items"] == 256
    assert 0 < metrics["codebook_usage"] <= 1 and metrics["perplexity"] >= 1
    assert metrics["psnr"] > 8  # an untrained model sits near 5 dB on these images (see the next assertion)
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md",
                 "reconstructions.png", "codebook_usage.png", "samples/reconstructions-00000006.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")), "weights must be safetensors only"
    assert "Test-set figures" in result.stdout and "reconstructions.png" in result.stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checkpoint-00000008",
        "checkpoint-00000012",
    ]

    model = AutoModel.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    assert type(model).__name__ == "VQVAEModel" and type(processor).__name__ == "VQVAEImageProcessor"
    from vq_tokenizer.data import load_image_dataset

    images = load_image_dataset("fashion_mnist", "test")[:8]["image"]
    pixel_values = processor(images, return_tensors="pt").pixel_values
    with torch.no_grad():
        trained = model(pixel_values).reconstruction_loss
        untrained = vq_tokenizer.VQVAEModel(model.config).eval()(pixel_values).reconstruction_loss
    assert trained < 0.95 * untrained  # 12 steps of a 10k-parameter model: a real but small gain
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "vq_tokenizer"
    assert card.data.eval_results and {r.metric_type for r in card.data.eval_results} >= {"psnr", "ssim"}


def test_two_processes_keep_identical_codebooks(tmp_path):
    out = tmp_path / "ddp"
    run_training(out, "--max_steps", "8", "--eval_every", "0", "--checkpoint_every", "0", processes=2)
    metrics = _metrics(out)
    assert metrics["num_processes"] == 2
    assert metrics["codebook_synchronized"] is True
    assert metrics["num_eval_items"] == 256  # gather_for_metrics drops the duplicated tail


def test_two_processes_match_one_process_with_double_batch(tmp_path):
    """2 processes x batch 8 see the same 16 images per step as 1 process x batch 16: same codebook."""
    common = ["--max_steps", "6", "--eval_every", "0", "--checkpoint_every", "0", "--max_eval_samples", "16"]
    # k-means candidates and restarts are drawn per process, so compare the EMA path itself.
    overrides = ["--no-kmeans_init", "--dead_code_threshold", "0"]
    run_training(tmp_path / "one", *common, *overrides, "--per_device_batch_size", "16")
    run_training(tmp_path / "two", *common, *overrides, "--per_device_batch_size", "8", processes=2)
    one = load_file(tmp_path / "one" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model.safetensors")
    for key in ("quantizer.embed", "quantizer.cluster_size", "quantizer.embed_avg"):
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)


def test_resume_after_sigkill_continues_the_same_run(tmp_path):
    """Kill -9 after the first checkpoint, resume 'latest': same final weights as an uninterrupted run."""
    steps = ["--max_steps", "40", "--checkpoint_every", "10", "--eval_every", "0", "--max_eval_samples", "32"]
    reference = tmp_path / "reference"
    run_training(reference, *steps)

    crashed = tmp_path / "crashed"
    command = [
        sys.executable,
        str(SCRIPT),
        "--config",
        str(TINY),
        "--output_dir",
        str(crashed),
        "--report_to",
        "none",
        *steps,
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), cwd=REPO
    )
    deadline = time.time() + 300
    while not (crashed / "checkpoints" / "checkpoint-00000010").exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (crashed / "model.safetensors").exists(), "killed before the end: no final model yet"
    # A half-written checkpoint (as a kill during save_state leaves) must never be taken as 'latest'.
    half = crashed / "checkpoints" / ".tmp-checkpoint-00000099"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 10)

    result = run_training(crashed, *steps, "--resume_from_checkpoint", "latest")
    assert "Resumed from" in result.stdout and "at step" in result.stdout
    assert "checkpoint-00000099" not in result.stdout
    assert _metrics(crashed)["step"] == 40
    final, expected = load_file(crashed / "model.safetensors"), load_file(reference / "model.safetensors")
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.equal(final[key], expected[key]), key


def test_non_finite_loss_stops_without_saving(tmp_path):
    out = tmp_path / "nan"
    result = run_training(
        out, "--learning_rate", "1e30", "--max_steps", "10", "--checkpoint_every", "0", check=False
    )
    assert result.returncode != 0
    assert "Non-finite loss at step" in result.stderr
    assert not (out / "model.safetensors").exists()


def test_imagefolder_dataset_and_rgb(tmp_path):
    """Any imagefolder works: real photos from scikit-image, RGB, resized, streamed."""
    from PIL import Image
    from skimage import data as photos

    root = tmp_path / "photos"
    for split, names in {
        "train": ("astronaut", "coffee", "chelsea", "rocket"),
        "test": ("immunohistochemistry",),
    }.items():
        (root / split).mkdir(parents=True)
        for name in names:
            image = Image.fromarray(getattr(photos, name)())
            for index, box in enumerate([(0, 0, 200, 200), (100, 100, 300, 300)]):
                image.crop(box).save(root / split / f"{name}-{index}.png")
    out = tmp_path / "rgb"
    run_training(
        out, "--dataset_name", str(root), "--image_size", "32", "--in_channels", "3", "--streaming",
        "--per_device_batch_size", "4", "--max_steps", "3", "--eval_every", "0", "--checkpoint_every", "0",
        "--max_train_samples", "8",
    )  # fmt: skip
    metrics = _metrics(out)
    assert metrics["step"] == 3 and metrics["num_eval_items"] == 2
    config = json.loads((out / "config.json").read_text())
    assert config["in_channels"] == 3
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["num_channels"] == 3 and processor["size"] == {"height": 32, "width": 32}


@pytest.mark.parametrize(
    "bad", [["--resume_from_checkpoint", "/nonexistent/checkpoint-1"], ["--push_to_hub"]]
)
def test_bad_arguments_fail_with_a_message(tmp_path, bad):
    result = run_training(tmp_path / "bad", *bad, check=False)
    assert result.returncode != 0
    assert ("not a checkpoint folder" in result.stderr) or ("needs --hub_model_id" in result.stderr)


# ---------------------------------------------------------------------------------------------------------
# What the scripts share


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "training" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_sets_defaults_and_the_command_line_wins():
    parse_args = _script("train_vqvae").parse_args
    args = parse_args(["--config", str(TINY), "--output_dir", "out", "--learning_rate", "0.5",
                       "--codebook_size", "64", "--no-kmeans_init", "--streaming"])  # fmt: skip
    assert args.run.learning_rate == 0.5 and args.run.max_steps == 12  # command line, recipe
    assert args.run.lr_schedule == "constant" and args.run.per_device_batch_size == 16  # default, recipe
    assert args.data.max_train_samples == 512 and args.data.streaming is True
    # The `model:` mapping is the VQVAEConfig; the model options override it.
    assert (
        args.config.codebook_size == 64 and args.config.hidden_size == 16 and args.config.kmeans_init is False
    )
    assert (
        parse_args(["--config", str(TINY), "--output_dir", "o", "--kmeans_init"]).config.kmeans_init is True
    )
    assert parse_args(["--output_dir", "o"]).config.to_diff_dict() == VQVAEConfig().to_diff_dict()
    recipe = yaml.safe_load(TINY.read_text())
    assert set(recipe) - {"model"} <= set(args.as_dict()), "every recipe key is an option"


def test_every_recipe_parses():
    for path in sorted((REPO / "training" / "configs").glob("*.yaml")):
        script = "train_prior" if path.name.startswith("prior") else "train_vqvae"
        extra = ["--tokenizer", "tok"] if script == "train_prior" else []
        args = _script(script).parse_args(["--config", str(path), "--output_dir", "o", *extra])
        recipe = yaml.safe_load(path.read_text())
        assert args.run.max_steps == recipe["max_steps"] and args.run.learning_rate == recipe["learning_rate"]


@dataclass
class _Options:
    learning_rate: float = 1e-3
    max_steps: int = 10


@pytest.mark.parametrize(
    "recipe, message",
    [
        ("learning_rat: 0.1\n", "unknown keys"),
        ("- 1\n- 2\n", "must hold a mapping"),
        ("model: 3\n", "`model:` in"),
        ("learning_rate: [1\n", "cannot read the recipe"),
        (None, "cannot read the recipe"),
    ],
)
def test_recipe_errors_are_usage_errors(tmp_path, capsys, recipe, message):
    path = tmp_path / "recipe.yaml"
    if recipe is not None:
        path.write_text(recipe)
    parser = RecipeArgumentParser(_Options, mappings=("model",))
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_recipe_and_args(["--config", str(path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_recipe_mappings_come_back_as_they_are(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("max_steps: 3\nmodel:\n  codebook_size: 8\n")
    parser = RecipeArgumentParser(_Options, mappings=("model",))
    (options,), mappings = parser.parse_recipe_and_args(["--config", str(path), "--learning_rate", "2"])
    assert options == _Options(learning_rate=2.0, max_steps=3) and mappings == {"model": {"codebook_size": 8}}
    assert parser.parse_recipe_and_args([]) == ((_Options(),), {"model": {}})


def test_the_training_clock_counts_from_a_resumed_figure_and_not_while_paused():
    """The clock the budget and the schedule read: seconds before a resume count, an evaluation in a `paused()`
    block does not (its time source is a plain counter here, so nothing depends on the machine's speed)."""
    from accelerate import Accelerator

    now = [100.0]
    clock = TrainingClock(Accelerator(cpu=True), seconds_before=30.0, timer=lambda: now[0])
    now[0] += 5.0
    assert clock.seconds() == 35.0
    with clock.paused():
        now[0] += 60.0  # an evaluation
    assert clock.seconds() == 35.0
    now[0] += 2.0
    assert clock.seconds() == 37.0
    with pytest.raises(RuntimeError), clock.paused():
        now[0] += 10.0
        raise RuntimeError("an evaluation that fails still leaves the clock right")
    assert clock.seconds() == 37.0


def test_schedule_warms_up_then_anneals_over_the_budget_that_binds():
    steps = TrainingSchedule(1.0, max_steps=110, warmup_steps=10)
    assert [steps.factor(step) for step in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert steps.factor(10) == 1.0 and steps.factor(60) == pytest.approx(0.5) and steps.factor(110) == 0.0
    assert steps.factor(35) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    # A time budget that binds first: the cosine follows the time used, and the run ends with it.
    timed = TrainingSchedule(1.0, max_steps=110, max_seconds=100.0, warmup_steps=10)
    assert timed.factor(20, seconds=50.0) == pytest.approx(0.5) and timed.factor(20, seconds=100.0) == 0.0
    assert timed.finished(20, seconds=100.0) and not timed.finished(109, seconds=99.0) and timed.finished(110)
    assert TrainingSchedule(1.0, max_seconds=10.0).factor(10_000, seconds=5.0) == pytest.approx(0.5)
    floor = TrainingSchedule(2.0, max_steps=100, final_factor=0.1)
    assert floor.learning_rate_at(100) == pytest.approx(0.2) and floor.learning_rate_at(50) == pytest.approx(
        1.1
    )
    constant = TrainingSchedule(1e-3, max_steps=100, warmup_steps=4, decay="constant")
    assert constant.learning_rate_at(1) == pytest.approx(5e-4) and constant.learning_rate_at(99) == 1e-3
    optimizer = torch.optim.SGD([{"params": [torch.zeros(1)]}, {"params": [torch.zeros(1)]}], lr=1.0)
    assert constant.apply(optimizer, 50) == 1e-3 and [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-3]
    for bad in ({"decay": "linear"}, {"final_factor": 2.0}, {"max_steps": None}):
        with pytest.raises(ValueError):
            TrainingSchedule(1.0, **{"max_steps": 10, **bad})
