"""training/train_prior.py: a transformers prior trained on the codes of a tiny tokenizer (trained here for a
few steps on real Fashion-MNIST images), pushed to the Hub and sampled the way a downstream user would; and
trained on the output of `vq-tokenizer encode-dataset` (a folder, or a Hub dataset repo streamed), which gives
the very sequences the script makes when it encodes the dataset itself."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from vq_tokenizer import CodeTokenMapping, VQVAEImageProcessor, VQVAEModel
from vq_tokenizer.cli import main as cli
from vq_tokenizer.data import load_split
from vq_tokenizer.token_mapping import TOKEN_MAPPING_NAME

# Every tensor here is tiny: one torch thread (the `one_thread` fixture of conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
# A tiny LM, 200 train and 64 eval images of Fashion-MNIST, a few steps.
SMALL_RUN = ["--max_train_samples", "200", "--max_eval_samples", "64", "--encode_batch_size", "64",
             "--num_hidden_layers", "1", "--hidden_size", "16", "--intermediate_size", "32", "--num_attention_heads",
             "2", "--batch_size", "32", "--warmup_steps", "2", "--max_steps", "8", "--log_every", "2",
             "--samples_per_class", "1", "--eval_batch_size", "32", "--num_threads", "1"]  # fmt: skip


def _train_prior_module():
    spec = importlib.util.spec_from_file_location("train_prior", REPO / "training" / "train_prior.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prior_trains_on_real_codes_and_samples_valid_images(
    tmp_path, tiny_tokenizer, hub_api, hub_token, hub_repo_id, hub_cache
):
    from transformers import LlamaForCausalLM

    out = tmp_path / "prior"
    metrics = _train_prior_module().main(
        ["--tokenizer", str(tiny_tokenizer), "--output_dir", str(out), "--max_train_samples", "512",
         "--max_eval_samples", "128", "--num_hidden_layers", "2", "--hidden_size", "32", "--intermediate_size",
         "64", "--num_attention_heads", "2", "--batch_size", "32", "--learning_rate", "3e-3", "--warmup_steps",
         "5", "--max_steps", "40", "--log_every", "5", "--samples_per_class", "2", "--eval_batch_size", "64",
         "--num_threads", "1", "--push_to_hub", "--hub_model_id", hub_repo_id, "--hub_token", hub_token]
    )  # fmt: skip
    history = [bits for _, bits in metrics["loss_history_bits_per_code"]]
    assert history[-1] < history[0] - 0.5, history  # the loss goes down
    assert metrics["eval_bits_per_code"] < metrics["uniform_bits_per_code"] == 5.0
    assert metrics["eval_bits_per_dim"] == pytest.approx(metrics["eval_bits_per_code"] * 49 / 784)
    assert metrics["step"] == 40
    for name in ("model.safetensors", "config.json", TOKEN_MAPPING_NAME, "samples.png", "metrics.json"):
        assert (out / name).is_file(), name
    from PIL import Image

    with Image.open(out / "samples.png") as grid:
        assert grid.height == 10 * 28 * 2  # one row per class, tiles scaled x2

    # What a downstream user does with the repo id alone (the saved generation config holds the length).
    assert "codes/" not in " ".join(hub_api.list_repo_files(hub_repo_id))
    lm = LlamaForCausalLM.from_pretrained(hub_repo_id, token=hub_token)
    mapping = CodeTokenMapping.from_pretrained(hub_repo_id, token=hub_token)
    assert mapping == CodeTokenMapping.from_pretrained(out)
    assert mapping.offset == 10 and lm.config.vocab_size == 42 and len(lm.config.class_names) == 10
    prompts = torch.arange(10)[:, None]
    ids = lm.generate(
        prompts, attention_mask=torch.ones_like(prompts), logits_processor=[mapping.logits_processor()]
    )
    assert ids.shape == (10, 50) and torch.equal(ids[:, 0], prompts[:, 0])
    assert ((ids[:, 1:] >= 10) & (ids[:, 1:] < 42)).all()
    tokenizer = VQVAEModel.from_pretrained(tiny_tokenizer)
    assert tokenizer.decode(mapping.ids_to_codes(ids[:, 1:])).reconstruction.shape == (10, 1, 28, 28)
    saved = torch.load(out / "sample_ids.pt")
    assert saved.shape == (20, 50) and ((saved[:, 1:] >= 10) & (saved[:, 1:] < 42)).all()


def test_prior_trains_on_residual_codes_end_to_end(tmp_path, fashion_subset):
    """A tiny RVQ tokenizer (2 levels of K=16): the prior reads each position's 2 codes in turn, reports the NLL
    of each level, and its samples (the right level's ids at every position) decode to images."""
    import fashion

    tokenizer = fashion.train_tiny_tokenizer(
        tmp_path / "tokenizer", fashion_subset, quantizer_type="rvq", num_quantizers=2, codebook_size=16
    )
    out = tmp_path / "prior"
    metrics = _train_prior_module().main(
        ["--tokenizer", str(tokenizer), "--output_dir", str(out), *SMALL_RUN, "--max_steps", "20",
         "--learning_rate", "3e-3"]
    )  # fmt: skip
    assert metrics["num_levels"] == 2 and metrics["codes_per_image"] == 2 * 49
    assert metrics["uniform_bits_per_code"] == 4.0  # each code is one of its level's K = 16
    levels = metrics["eval_bits_per_code_per_level"]
    assert len(levels) == 2 and all(0 < bits < 6 for bits in levels), levels
    assert metrics["eval_bits_per_code"] == pytest.approx(sum(levels) / 2)
    assert metrics["eval_bits_per_dim"] == pytest.approx(metrics["eval_bits_per_code"] * 98 / 784)
    history = [bits for _, bits in metrics["loss_history_bits_per_code"]]
    assert history[-1] < history[0], history  # it learns

    mapping = CodeTokenMapping.from_pretrained(out)
    assert mapping.num_levels == 2 and mapping.offset == 10 and mapping.image_token_range == (10, 42)
    ids = torch.load(out / "sample_ids.pt")
    assert ids.shape == (10, 1 + 98)
    level_of_position = torch.arange(98) % 2  # `b q h w -> b (h w q)`: the level varies fastest
    first = torch.tensor([mapping.level_token_range(level)[0] for level in range(2)])[level_of_position]
    assert ((ids[:, 1:] >= first) & (ids[:, 1:] < first + 16)).all()
    codes = mapping.ids_to_codes(ids[:, 1:])
    assert codes.shape == (10, 2, 7, 7) and codes.min() >= 0 and codes.max() < 16
    model = VQVAEModel.from_pretrained(tokenizer)
    assert model.decode(codes).reconstruction.shape == (10, 1, 28, 28)
    from PIL import Image

    with Image.open(out / "samples.png") as grid:
        assert grid.height == 10 * 28 * 2  # one row per class: the samples decoded


def _encode(tokenizer: Path, *args: str) -> None:
    """`vq-tokenizer encode-dataset` of the first 200 train and 64 test images (both splits in one output)."""
    for split, rows in (("train", 200), ("test", 64)):
        argv = ["encode-dataset", "--model", str(tokenizer), "--dataset", "fashion_mnist", "--split", split,
                "--max_samples", str(rows), "--batch_size", "64", *args]  # fmt: skip
        assert cli(argv) == 0


@pytest.fixture(scope="module")
def codes_folder(tmp_path_factory, tiny_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("encoded") / "codes"
    _encode(tiny_tokenizer, "-o", str(folder))
    return folder


def _sequences_by_hand(folder_or_repo: str, split: str, **kwargs) -> torch.Tensor:
    """`[label] + (10 + codes)` of each row, read with `datasets` alone."""
    rows = datasets.load_dataset(folder_or_repo, split=split, **kwargs).with_format("torch")[:]
    return torch.cat([rows["label"][:, None], 10 + rows["codes"].flatten(1)], dim=1)


def test_an_encoded_folder_gives_the_sequences_and_the_run_of_encoding_here(
    tmp_path, tiny_tokenizer, codes_folder
):
    prior = _train_prior_module()
    args = prior.parse_args(["--tokenizer", str(tiny_tokenizer), "--output_dir", str(tmp_path), *SMALL_RUN])
    model, processor = (
        VQVAEModel.from_pretrained(tiny_tokenizer),
        VQVAEImageProcessor.from_pretrained(tiny_tokenizer),
    )
    data = prior.load_codes(args.data, str(codes_folder), None, None, model, processor)
    assert torch.equal(data.train, _sequences_by_hand(str(codes_folder), "train"))
    assert torch.equal(data.eval, _sequences_by_hand(str(codes_folder), "test"))
    assert data.train.shape == (200, 50) and data.num_train == 200 and len(data.class_names) == 10
    assert data.mapping.offset == 10 and data.pixels_per_image == 784
    assert (
        load_split(str(codes_folder), "test")["codes"][:]
        == datasets.load_dataset(  # a folder of data files
            str(codes_folder), split="test"
        )["codes"][:]
    )

    base = ["--tokenizer", str(tiny_tokenizer), *SMALL_RUN]
    from_folder = prior.main(
        [*base, "--output_dir", str(tmp_path / "a"), "--codes_dataset", str(codes_folder)]
    )
    encoded_here = prior.main([*base, "--output_dir", str(tmp_path / "b")])
    assert not (tmp_path / "a" / "codes").exists()
    (here,) = (tmp_path / "b" / "codes").iterdir()  # the script's own encoding, in the same layout
    assert torch.equal(_sequences_by_hand(str(here), "train"), data.train)
    for key in ("loss_history_bits_per_code", "eval_bits_per_code", "num_train_sequences", "step"):
        assert from_folder[key] == encoded_here[key], key  # same sequences, same seed: the same run
    assert from_folder["step"] == 8 and from_folder["num_train_sequences"] == 200
    assert from_folder["eval_bits_per_dim"] == pytest.approx(from_folder["eval_bits_per_code"] * 49 / 784)


def test_a_hub_dataset_repo_is_streamed(
    tmp_path, tiny_tokenizer, codes_folder, hub_api, hub_token, hub_repo_id, hub_cache
):
    _encode(tiny_tokenizer, "-o", str(tmp_path / "codes"), "--push_to_hub", hub_repo_id, "--token", hub_token)
    assert "data/train-00000-of-00001.parquet" in hub_api.list_repo_files(hub_repo_id, repo_type="dataset")
    prior = _train_prior_module()
    argv = ["--tokenizer", str(tiny_tokenizer), "--output_dir", str(tmp_path / "prior"), "--codes_dataset",
            hub_repo_id, "--streaming", "--hub_token", hub_token, *SMALL_RUN]  # fmt: skip
    args = prior.parse_args(argv)
    model, processor = (
        VQVAEModel.from_pretrained(tiny_tokenizer),
        VQVAEImageProcessor.from_pretrained(tiny_tokenizer),
    )
    data = prior.load_codes(args.data, hub_repo_id, None, hub_token, model, processor)
    assert isinstance(data.train, datasets.IterableDataset) and data.num_train == 200
    (streamed,) = prior.SequenceBatches(data.mapping, "label")(list(data.train))
    assert torch.equal(streamed, _sequences_by_hand(str(codes_folder), "train"))  # in the source order
    assert torch.equal(data.eval, _sequences_by_hand(str(codes_folder), "test"))

    metrics = prior.main(argv)  # 8 steps of 32 over 200 rows: the stream is read again (shuffled anew)
    assert (
        metrics["step"] == 8 and metrics["num_train_sequences"] == 200 and metrics["num_eval_sequences"] == 64
    )
    assert metrics["eval_bits_per_code"] < 6  # finite, of the order of log2(32) = 5
    assert not any(path.name == "codes" for path in (tmp_path / "prior").iterdir())


def test_codes_of_another_tokenizer_are_refused(tmp_path, tiny_tokenizer, codes_folder):
    other = tmp_path / "other"
    model = VQVAEModel.from_pretrained(tiny_tokenizer)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 0.5  # one weight differs
    model.save_pretrained(other)
    VQVAEImageProcessor.from_pretrained(tiny_tokenizer).save_pretrained(other)
    argv = ["--tokenizer", str(other), "--output_dir", str(tmp_path / "prior"), "--codes_dataset", str(codes_folder),
            *SMALL_RUN]  # fmt: skip
    with pytest.raises(ValueError, match=r"holds codes of another tokenizer .* than --tokenizer .*other"):
        _train_prior_module().main(argv)
    assert not (tmp_path / "prior" / "model.safetensors").exists()


def test_two_processes_share_the_encoding_and_the_stream(tmp_path, tiny_tokenizer):
    """`accelerate launch` of 2 CPU processes (gloo): both encode their share of the splits, then each trains on
    its part of the streamed train split (`split_dataset_by_node`), in step, to the end."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(port), str(REPO / "training" / "train_prior.py"), "--tokenizer", str(tiny_tokenizer),
               "--output_dir", str(tmp_path), "--streaming", *SMALL_RUN, "--batch_size", "16"]  # fmt: skip
    # `--cpu --num_processes 2` would start only one process: gloo on CPU is asked for this way.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert result.returncode == 0, f"train_prior failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert result.stdout.count("Prior: ") == 1 and "200 train / 64 eval sequences" in result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["step"] == 8 and metrics["num_eval_sequences"] == 64
    (codes,) = (tmp_path / "codes").iterdir()
    assert sorted(path.name for path in (codes / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]  # fmt: skip
