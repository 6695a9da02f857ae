"""Tokenised datasets (`encode_dataset`) and `vq-tokenizer encode-dataset`, on real Fashion-MNIST images and a
tiny tokenizer trained here for a few steps, and on synthetic audio of several lengths."""

from __future__ import annotations

import math
from pathlib import Path

import datasets
import fashion
import numpy as np
import pytest
import torch

from vq_tokenizer import CodeTokenMapping, VQVAEConfig, VQVAEFeatureExtractor, VQVAEImageProcessor, VQVAEModel
from vq_tokenizer.cli import main
from vq_tokenizer.dataset_encoding import encode_dataset


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
