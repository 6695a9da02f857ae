"""Codes <-> input_ids, tokenised datasets, the encode-dataset command and the transformers prior, on real
Fashion-MNIST images and a tiny tokenizer trained here for a few steps."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from tiny import tiny_config

from vq_tokenizer import VQVAEConfig, VQVAEImageProcessor, VQVAEModel
from vq_tokenizer.data import load_image_dataset
from vq_tokenizer.prior import TOKEN_MAPPING_NAME, CodeTokenMapping, encode_dataset

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
    """256 real Fashion-MNIST training images, in memory (so no cache files land beside the shared copy)."""
    full = load_image_dataset("fashion_mnist", "train")
    return datasets.Dataset.from_dict(full[:256], features=full.features)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory, fashion_subset) -> Path:
    """A tiny VQ-VAE trained for 20 steps on real images (k-means init, EMA), saved with its processor."""
    torch.manual_seed(0)
    model = VQVAEModel(tiny_config(in_channels=1))
    processor = VQVAEImageProcessor(num_channels=1, size_divisor=model.config.downsampling_factor)
    pixels = processor(fashion_subset[:]["image"], return_tensors="pt").pixel_values
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for step in range(20):
        batch = pixels[(step * 64) % 256 :][:64]
        model(pixel_values=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("tokenizer")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------------------
# The mapping


@pytest.mark.parametrize(
    "offset, bos, eos",
    [(0, None, None), (10, None, None), (10, 42, None), (10, None, 43), (3, 0, 50), (0, 40, 41)],
)
@pytest.mark.parametrize("grid", [(7, 7), (4, 6), (25,)], ids=["image7x7", "image4x6", "audio25"])
def test_codes_ids_round_trip(grid, offset, bos, eos):
    mapping = CodeTokenMapping(32, grid_shape=grid, offset=offset, bos_token_id=bos, eos_token_id=eos)
    codes = torch.randint(0, 32, (3, *grid), generator=torch.Generator().manual_seed(0))
    ids = mapping.codes_to_ids(codes)
    length = math.prod(grid) + (bos is not None) + (eos is not None)
    assert ids.shape == (3, length) == (3, mapping.sequence_length) and ids.dtype == torch.long
    body = ids[:, int(bos is not None) : length - int(eos is not None)]
    assert torch.equal(body, codes.flatten(1) + offset)  # row-major: 'b h w -> b (h w)'
    if bos is not None:
        assert (ids[:, 0] == bos).all()
    if eos is not None:
        assert (ids[:, -1] == eos).all()
    assert torch.equal(mapping.ids_to_codes(ids), codes)
    assert torch.equal(mapping.ids_to_codes(ids.numpy()), codes)  # numpy in, tensor out
    # One item without the batch axis, both ways.
    assert torch.equal(mapping.codes_to_ids(codes[0]), ids[:1])
    assert torch.equal(mapping.ids_to_codes(ids[0]), codes[:1])
    assert mapping.min_vocab_size >= max(offset + 32, (bos or 0) + 1, (eos or 0) + 1)


def test_audio_of_any_length_without_a_fixed_grid():
    mapping = CodeTokenMapping(64, offset=5, eos_token_id=0)
    for length in (1, 17, 250):
        codes = torch.randint(0, 64, (2, length))
        ids = mapping.codes_to_ids(codes)
        assert ids.shape == (2, length + 1)
        assert torch.equal(mapping.ids_to_codes(ids), codes)
    # A grid given at call time folds the flat codes.
    codes = torch.randint(0, 64, (2, 3, 4))
    assert torch.equal(mapping.ids_to_codes(mapping.codes_to_ids(codes), grid_shape=(3, 4)), codes)


def test_out_of_range_ids_and_wrong_lengths_are_refused():
    mapping = CodeTokenMapping(32, grid_shape=(2, 2), offset=10)
    good = mapping.codes_to_ids(torch.zeros(2, 2, 2, dtype=torch.long))
    bad = good.clone()
    bad[0, 1], bad[1, 3] = 5, 42  # a class token and one past the last code
    with pytest.raises(ValueError, match=re.escape("[10, 42)")) as error:
        mapping.ids_to_codes(bad)
    assert "[5, 42]" in str(error.value)  # the offending ids are named
    with pytest.raises(ValueError, match="needs 4"):
        mapping.ids_to_codes(good[:, :3])
    with pytest.raises(ValueError, match=re.escape("[0, 31]")):
        mapping.codes_to_ids(torch.full((1, 2, 2), 32))
    with pytest.raises(ValueError, match="grid_shape"):
        mapping.codes_to_ids(torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        mapping.codes_to_ids(torch.zeros(1, 2, 2))
    framed = CodeTokenMapping(32, grid_shape=(2, 2), offset=10, bos_token_id=0, eos_token_id=1)
    ids = framed.codes_to_ids(torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="bos_token_id=0"):
        framed.ids_to_codes(ids[:, 1:])
    with pytest.raises(ValueError, match="eos_token_id=1"):
        framed.ids_to_codes(ids[:, :-1])
    with pytest.raises(ValueError, match="inside the image-token range"):
        CodeTokenMapping(32, offset=10, bos_token_id=20)
    with pytest.raises(ValueError, match="codebook_size"):
        CodeTokenMapping(0)


def test_mapping_from_config():
    image = tiny_config(in_channels=1)
    assert CodeTokenMapping.from_config(image, input_size=(28, 28)).grid_shape == (7, 7)
    assert CodeTokenMapping.from_config(image, input_size=(30, 29)).grid_shape == (8, 8)  # the processor pads
    mapping = CodeTokenMapping.from_config(image, grid_shape=(7, 7), offset=10, bos_token_id=0)
    assert mapping.codebook_size == 32 and mapping.image_token_range == (10, 42)
    audio = VQVAEConfig(modality="audio", hop_length=16, codebook_size=64)
    assert CodeTokenMapping.from_config(audio, input_size=(1000,)).grid_shape == (63,)
    with pytest.raises(ValueError, match="2 value"):
        CodeTokenMapping.from_config(image, grid_shape=(49,))


def test_logits_processor_allows_code_ids_only():
    mapping = CodeTokenMapping(32, grid_shape=(7, 7), offset=10)
    scores = torch.randn(3, 50)
    masked = mapping.logits_processor()(torch.zeros(3, 1, dtype=torch.long), scores)
    assert torch.isfinite(masked[:, 10:42]).all() and torch.equal(masked[:, 10:42], scores[:, 10:42])
    assert torch.isneginf(masked[:, :10]).all() and torch.isneginf(masked[:, 42:]).all()
    with pytest.raises(ValueError, match="vocab_size >= 42"):
        mapping.logits_processor()(torch.zeros(3, 1, dtype=torch.long), torch.randn(3, 40))


def test_mapping_saves_beside_a_model_and_loads_by_folder_and_repo_id(
    tmp_path, tiny_tokenizer, hub_api, hub_token, hub_repo_id, hub_cache
):
    model = VQVAEModel.from_pretrained(tiny_tokenizer)
    mapping = CodeTokenMapping.from_config(model.config, grid_shape=(7, 7), offset=10, eos_token_id=0)
    folder = tmp_path / "tokenizer"
    model.save_pretrained(folder)
    path = mapping.save_pretrained(folder)
    assert path == folder / TOKEN_MAPPING_NAME
    assert CodeTokenMapping.from_pretrained(folder) == mapping
    with pytest.raises(FileNotFoundError, match=TOKEN_MAPPING_NAME):
        CodeTokenMapping.from_pretrained(tiny_tokenizer)  # a tokenizer folder without a mapping

    model.push_to_hub(hub_repo_id, token=hub_token)
    mapping.push_to_hub(hub_repo_id, token=hub_token)
    assert {"model.safetensors", "config.json", TOKEN_MAPPING_NAME} <= set(
        hub_api.list_repo_files(hub_repo_id)
    )
    assert CodeTokenMapping.from_pretrained(hub_repo_id, token=hub_token) == mapping


# ---------------------------------------------------------------------------------------------------------
# Tokenised datasets


def test_encode_dataset_saves_codes_and_labels_and_is_idempotent(tmp_path, tiny_tokenizer, fashion_subset):
    model = VQVAEModel.from_pretrained(tiny_tokenizer).train()
    processor = VQVAEImageProcessor.from_pretrained(tiny_tokenizer)
    mapping = CodeTokenMapping.from_config(model.config, input_size=(28, 28), offset=10, bos_token_id=0)
    output = tmp_path / "codes" / "train"
    encoded = encode_dataset(
        model, processor, fashion_subset, batch_size=100, mapping=mapping, output_dir=output
    )
    assert model.training, "the model's mode is restored"

    loaded = datasets.load_from_disk(str(output))
    assert sorted(loaded.column_names) == ["codes", "input_ids", "label"]
    assert loaded.features["label"] == fashion_subset.features["label"]
    assert loaded["label"][:] == fashion_subset["label"][:]
    columns = loaded.with_format("torch")[:]
    assert columns["codes"].shape == (256, 7, 7) and columns["input_ids"].shape == (256, 50)
    assert columns["codes"].dtype == columns["input_ids"].dtype == torch.int64
    with torch.no_grad():
        expected = model.eval().encode(
            processor(fashion_subset[:8]["image"], return_tensors="pt").pixel_values
        )
    assert torch.equal(columns["codes"][:8], expected.codes)
    assert torch.equal(mapping.ids_to_codes(columns["input_ids"]), columns["codes"])
    assert CodeTokenMapping.from_pretrained(output) == mapping
    assert len(encoded) == 256

    # Same data, tokenizer and mapping: the folder is reused as it is.
    arrow = next(output.glob("*.arrow"))
    before = (arrow.stat().st_ino, arrow.stat().st_mtime_ns)
    again = encode_dataset(model, processor, fashion_subset, mapping=mapping, output_dir=output)
    assert (arrow.stat().st_ino, arrow.stat().st_mtime_ns) == before
    assert again["codes"][:] == loaded["codes"][:]
    # Recomputing gives the same codes; another mapping is another encoding (no stale reuse).
    redone = encode_dataset(
        model, processor, fashion_subset, mapping=mapping, output_dir=output, overwrite=True
    )
    assert redone["codes"][:] == loaded["codes"][:]
    other = CodeTokenMapping.from_config(model.config, input_size=(28, 28), offset=20)
    shifted = encode_dataset(model, processor, fashion_subset, mapping=other, output_dir=output)
    assert torch.equal(shifted.with_format("torch")["input_ids"][:], columns["input_ids"][:, 1:] + 10)
    assert not list(output.parent.glob(".train.*")), "no temporary folders left behind"


def test_encode_dataset_audio_codes_follow_each_length(tmp_path):
    from vq_tokenizer import VQVAEFeatureExtractor

    torch.manual_seed(0)
    model = VQVAEModel(VQVAEConfig(modality="audio", hop_length=16, hidden_size=8, residual_hidden_size=4,
                                   num_residual_layers=1, codebook_size=16, codebook_dim=4)).eval()  # fmt: skip
    extractor = VQVAEFeatureExtractor(feature_size=1, sampling_rate=16000, hop_length=16)
    time = np.arange(1000) / 16000
    lengths = [1000, 333, 64]
    rows = {
        "audio": [np.sin(2 * np.pi * 440 * time[:n]).astype(np.float32) for n in lengths],
        "sampling_rate": [16000] * 3,
        "speaker": ["a", "b", "c"],
    }
    encoded = encode_dataset(
        model, extractor, datasets.Dataset.from_dict(rows), mapping=CodeTokenMapping(16, offset=2)
    )
    assert sorted(encoded.column_names) == ["codes", "input_ids", "sampling_rate", "speaker"]
    assert [len(codes) for codes in encoded["codes"]] == [math.ceil(n / 16) for n in lengths]
    alone = extractor(rows["audio"][1], sampling_rate=16000, return_tensors="pt").input_values
    with torch.no_grad():  # more padding in the batch does not change the real codes
        assert encoded["codes"][1] == model.encode(input_values=alone).codes[0].tolist()


def test_encode_dataset_command_saves_and_pushes(
    tmp_path, tiny_tokenizer, hub_api, hub_token, hub_repo_id, capsys
):
    from vq_tokenizer.cli import main

    output = tmp_path / "codes"
    argv = ["encode-dataset", "--model", str(tiny_tokenizer), "--dataset", "fashion_mnist", "--split", "test",
            "--max_samples", "64", "-o", str(output), "--offset", "10", "--push_to_hub", hub_repo_id,
            "--token", hub_token]  # fmt: skip
    assert main(argv) == 0
    assert "64 rows" in capsys.readouterr().out
    loaded = datasets.load_from_disk(str(output))
    assert sorted(loaded.column_names) == ["codes", "input_ids", "label"]
    assert loaded.with_format("torch")["input_ids"][:].shape == (64, 49)
    assert CodeTokenMapping.from_pretrained(output).offset == 10
    files = hub_api.list_repo_files(hub_repo_id, repo_type="dataset")
    assert any(name.endswith(".parquet") for name in files), files
    assert main(["encode-dataset", "--model", str(tiny_tokenizer)]) == 1  # neither -o nor --push_to_hub
    assert "--output_dir" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# The prior


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


def test_readme_snippet_runs(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Use the tokens in your own transformer", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert CodeTokenMapping.from_pretrained(tmp_path / "my-tokenizer").offset == 10
