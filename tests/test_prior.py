"""training/train_prior.py: a transformers prior trained on the codes of a tiny tokenizer (trained here for a
few steps on real Fashion-MNIST images), pushed to the Hub and sampled the way a downstream user would."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import datasets
import fashion
import pytest
import torch

from vq_tokenizer import CodeTokenMapping, VQVAEModel
from vq_tokenizer.token_mapping import TOKEN_MAPPING_NAME

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every tensor here is tiny: a second thread only adds waiting (a lot of it on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fashion_subset() -> datasets.Dataset:
    """256 real Fashion-MNIST training images."""
    return fashion.fashion_subset(256)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory, fashion_subset) -> Path:
    return fashion.train_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"), fashion_subset)


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
