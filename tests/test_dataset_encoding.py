"""Tokenised datasets in one process (`encode_dataset`, `write_encoded_dataset`, `vq-tokenizer encode-dataset`):
parquet shards and a dataset card that `datasets` reads, reuse and refusal of an output folder, streaming input,
items that do not decode, bf16, the Hub. On real Fashion-MNIST images with a tiny tokenizer trained here for a
few steps, and on synthetic audio of several lengths. Several processes and kills: tests/test_encode_at_scale.py."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from vq_tokenizer import CodeTokenMapping, VQVAEConfig, VQVAEFeatureExtractor, VQVAEImageProcessor, VQVAEModel
from vq_tokenizer.cli import main
from vq_tokenizer.dataset_encoding import (
    encode_dataset,
    read_encoding_info,
    tokenizer_fingerprint,
    write_encoded_dataset,
)

# Every tensor here is tiny: one torch thread (the `one_thread` fixture of conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return VQVAEModel.from_pretrained(tiny_tokenizer), VQVAEImageProcessor.from_pretrained(tiny_tokenizer)


def _card(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    return yaml.safe_load(text.split("---\n")[1])


def _direct_codes(model, processor, images) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().encode(processor(images, return_tensors="pt").pixel_values).codes


def test_parquet_shards_and_card_read_by_datasets_and_reused_as_they_are(tmp_path, tokenizer, fashion_subset):
    model, processor = tokenizer
    model.train()
    mapping = CodeTokenMapping.from_config(model.config, input_size=(28, 28), offset=10, bos_token_id=0)
    output = tmp_path / "codes"
    encoded = encode_dataset(
        model, processor, fashion_subset, mapping=mapping, output_dir=output, batch_size=50, shard_size=100
    )
    assert model.training, "the model's mode is restored"

    shards = sorted(path.name for path in (output / "data").iterdir())
    assert shards == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    loaded = datasets.load_dataset(str(output), split="train")  # the folder as it is: the card says how
    assert loaded.column_names == ["index", "codes", "input_ids", "label"]
    assert loaded.features["label"] == fashion_subset.features["label"]
    assert loaded["label"][:] == fashion_subset["label"][:] and loaded["index"][:] == list(range(256))
    columns = loaded.with_format("torch")[:]
    assert columns["codes"].shape == (256, 7, 7) and columns["input_ids"].shape == (256, 50)
    assert columns["codes"].dtype == columns["input_ids"].dtype == torch.int64
    assert torch.equal(columns["codes"], _direct_codes(model, processor, fashion_subset["image"][:]))
    assert torch.equal(mapping.ids_to_codes(columns["input_ids"]), columns["codes"])
    assert CodeTokenMapping.from_pretrained(output) == mapping
    assert len(encoded) == 256 and encoded["codes"][:] == loaded["codes"][:]

    card = _card(output)
    assert card["dataset_info"]["splits"] == [{"name": "train", "num_bytes": 0, "num_examples": 256}]
    assert card["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
    ]
    assert card["vq_tokenizer"]["tokenizer"] == str(model.config.name_or_path)
    assert (
        card["vq_tokenizer"]["bits_per_code"] == 5
        and card["vq_tokenizer"]["token_mapping"] == mapping.to_dict()
    )
    assert (
        "| train | 256 | 3 | 49 | 245 | 0 |" in (output / "README.md").read_text()
    )  # codes and bits per item
    info = read_encoding_info(output)
    assert info.mapping == mapping and info.splits == {"train": 256} and info.codebook_size == 32

    # Same data, tokenizer and mapping: the shards are reused as they are (same files, untouched).
    before = {
        path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in (output / "data").iterdir()
    }
    summary = write_encoded_dataset(model, processor, fashion_subset, output, mapping=mapping)
    assert summary.encoded_rows == 0 and summary.num_rows == 256 and summary.num_shards == 3
    assert before == {
        path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in (output / "data").iterdir()
    }
    # --overwrite recomputes the same codes, with another shard size if asked.
    redone = encode_dataset(
        model, processor, fashion_subset, mapping=mapping, output_dir=output, overwrite=True
    )
    assert redone["codes"][:] == loaded["codes"][:] and len(list((output / "data").iterdir())) == 1
    # A second split goes beside the first; the card lists both.
    test_rows = datasets.Dataset.from_dict(fashion_subset[:40], features=fashion_subset.features)
    write_encoded_dataset(model, processor, test_rows, output, split="test", mapping=mapping)
    both = datasets.load_dataset(str(output))
    assert {name: len(split) for name, split in both.items()} == {"train": 256, "test": 40}
    assert read_encoding_info(output).splits == {"train": 256, "test": 40}
    assert not [path for path in output.rglob("*") if path.name.startswith(".")], "no temporary files left"


def test_another_tokenizer_mapping_or_dataset_is_refused_unless_overwrite(
    tmp_path, tokenizer, fashion_subset
):
    model, processor = tokenizer
    output = tmp_path / "codes"
    rows = datasets.Dataset.from_dict(fashion_subset[:32], features=fashion_subset.features)
    write_encoded_dataset(model, processor, rows, output, progress=False)
    other_model = VQVAEModel(model.config)  # same config, other weights
    with pytest.raises(ValueError, match="holds codes of another encoding .*pass --overwrite"):
        write_encoded_dataset(other_model, processor, rows, output)
    with pytest.raises(ValueError, match="another encoding .*mapping"):
        write_encoded_dataset(model, processor, rows, output, mapping=CodeTokenMapping(32, offset=3))
    with pytest.raises(ValueError, match="another encoding .*bf16"):
        write_encoded_dataset(model, processor, rows, output, dtype="bf16")
    other_rows = datasets.Dataset.from_dict(fashion_subset[32:64], features=fashion_subset.features)
    with pytest.raises(ValueError, match="holds split 'train' of another dataset"):
        write_encoded_dataset(model, processor, other_rows, output)
    summary = write_encoded_dataset(model, processor, other_rows, output, overwrite=True)
    assert summary.encoded_rows == 32
    assert torch.equal(
        datasets.load_dataset(str(output), split="train").with_format("torch")["codes"][:],
        _direct_codes(model, processor, other_rows["image"][:]),
    )
    first = read_encoding_info(output).tokenizer_fingerprint
    write_encoded_dataset(other_model, processor, rows, output, overwrite=True)
    assert (
        read_encoding_info(output).tokenizer_fingerprint
        == tokenizer_fingerprint(other_model, processor)
        != first
    )
    # A folder that no encoding wrote is never taken over silently.
    foreign = tmp_path / "foreign"
    (foreign / "data").mkdir(parents=True)
    (foreign / "data" / "mine.parquet").write_bytes(b"not ours")
    with pytest.raises(ValueError, match="not an encoding of this tool"):
        write_encoded_dataset(model, processor, rows, foreign)


def test_audio_codes_follow_each_length_in_memory():
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
    assert encoded.column_names == ["index", "codes", "input_ids", "sampling_rate", "speaker"]
    assert [len(codes) for codes in encoded["codes"]] == [math.ceil(n / 16) for n in lengths]
    alone = extractor(rows["audio"][1], sampling_rate=16000, return_tensors="pt").input_values
    with torch.no_grad():  # more padding in the batch does not change the real codes
        assert encoded["codes"][1] == model.encode(input_values=alone).codes[0].tolist()
    assert encoded["input_ids"][2] == [code + 2 for code in encoded["codes"][2]]


def test_a_stream_gives_the_same_rows_as_the_dataset(tmp_path, tokenizer, fashion_subset):
    model, processor = tokenizer
    files = []
    for index, (start, stop) in enumerate([(0, 90), (90, 100), (100, 256)]):  # three files of uneven lengths
        files.append(str(tmp_path / f"part-{index}.parquet"))
        fashion_subset.select(range(start, stop)).to_parquet(files[-1])
    stream = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    summary = write_encoded_dataset(
        model, processor, stream, tmp_path / "streamed", shard_size=64, batch_size=24
    )
    assert summary.num_rows == 256 and summary.num_shards == 4
    streamed = datasets.load_dataset(str(tmp_path / "streamed"), split="train")
    assert streamed["index"][:] == list(range(256)) and streamed["label"][:] == fashion_subset["label"][:]
    assert torch.equal(
        streamed.with_format("torch")["codes"][:], _direct_codes(model, processor, fashion_subset["image"][:])
    )


def test_items_that_do_not_decode_are_refused_or_skipped_by_index(tmp_path, tokenizer, fashion_subset):
    model, processor = tokenizer
    rows = fashion_subset[:20]
    images = [{"bytes": _png(image), "path": None} for image in rows["image"]]
    images[7] = {"bytes": b"\x89PNG\r\n\x1a\n broken", "path": None}
    images[13] = {"bytes": None, "path": str(tmp_path / "missing.png")}
    broken = datasets.Dataset.from_dict(
        {"image": images, "label": rows["label"]}, features=fashion_subset.features
    )

    with pytest.raises(ValueError, match=r"^Row 7 of the dataset does not decode \(.*\); .*--on_error skip"):
        write_encoded_dataset(model, processor, broken, tmp_path / "refused", batch_size=8, shard_size=8)
    summary = write_encoded_dataset(
        model, processor, broken, tmp_path / "skipped", batch_size=8, shard_size=8, on_error="skip"
    )
    assert [index for index, _ in summary.skipped] == [7, 13] and summary.num_rows == 18
    assert "skipped 2 row(s) that did not decode: 7 (UnidentifiedImageError" in str(summary)
    assert "FileNotFoundError" in summary.skipped[1][1]
    kept = datasets.load_dataset(str(tmp_path / "skipped"), split="train")
    assert kept["index"][:] == [i for i in range(20) if i not in (7, 13)]
    good = [image for i, image in enumerate(rows["image"]) if i not in (7, 13)]
    assert torch.equal(kept.with_format("torch")["codes"][:], _direct_codes(model, processor, good))
    card = (tmp_path / "skipped" / "README.md").read_text()
    assert "## Rows left out" in card and "- train: 7 (UnidentifiedImageError" in card
    manifest = json.loads((tmp_path / "skipped" / "vq_tokenizer_encoding.json").read_text())
    assert [index for index, _ in manifest["splits"]["train"]["skipped"]] == [7, 13]


def test_images_of_several_sizes_are_batched_by_size(tmp_path, tokenizer, fashion_subset):
    model, processor = tokenizer
    small, large = (
        fashion_subset["image"][:3],
        [image.resize((56, 40)) for image in fashion_subset["image"][3:5]],
    )
    mixed = datasets.Dataset.from_dict(
        {"image": [small[0], large[0], small[1], large[1], small[2]]},
        features=datasets.Features(image=datasets.Image()),
    )
    encoded = encode_dataset(model, processor, mixed)
    assert [np.array(codes).shape for codes in encoded["codes"]] == [
        (7, 7),
        (10, 14),
        (7, 7),
        (10, 14),
        (7, 7),
    ]
    assert encoded["codes"][1] == _direct_codes(model, processor, [large[0]])[0].tolist()


def test_bf16_autocast_gives_codes(tmp_path, tokenizer, fashion_subset):
    model, processor = tokenizer
    rows = datasets.Dataset.from_dict(fashion_subset[:16], features=fashion_subset.features)
    encoded = encode_dataset(model, processor, rows, dtype="bf16")
    codes = encoded.with_format("torch")["codes"][:]
    reference = _direct_codes(model, processor, rows["image"][:])
    assert codes.shape == reference.shape and (codes == reference).float().mean() > 0.9


def test_the_command_saves_resumes_and_pushes(
    tmp_path, tiny_tokenizer, hub_api, hub_token, hub_repo_id, hub_cache, capsys
):
    output = tmp_path / "codes"
    argv = ["encode-dataset", "--model", str(tiny_tokenizer), "--dataset", "fashion_mnist", "--split", "test",
            "--max_samples", "64", "-o", str(output), "--offset", "10", "--shard_size", "32", "--push_to_hub",
            hub_repo_id, "--token", hub_token, "--json", str(tmp_path / "summary.json")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "test: 64 rows, 3136 tokens, 2 shard(s) ->" in out and "items/s" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_rows"] == 64 and summary["encoded_rows"] == 64 and summary["items_per_second"] > 0
    loaded = datasets.load_dataset(str(output), split="test")
    assert loaded.column_names == ["index", "codes", "input_ids", "label"]
    assert loaded.with_format("torch")["input_ids"][:].shape == (64, 49)
    assert CodeTokenMapping.from_pretrained(output).offset == 10
    assert "fashion_mnist[test], first 64 rows" in (output / "README.md").read_text()

    files = hub_api.list_repo_files(hub_repo_id, repo_type="dataset")
    assert sorted(files) == [".gitattributes", "README.md", "data/test-00000-of-00002.parquet",
                             "data/test-00001-of-00002.parquet", "token_mapping.json"]  # fmt: skip
    pulled = datasets.load_dataset(hub_repo_id, split="test", token=hub_token)
    assert pulled["codes"][:] == loaded["codes"][:] and pulled.features == loaded.features
    assert read_encoding_info(hub_repo_id, token=hub_token).mapping.offset == 10

    # The same command again: nothing to encode; the push replaces the repo's shards of the split.
    assert main(argv) == 0
    assert "this run encoded 0 rows" in capsys.readouterr().out
    assert main(["encode-dataset", "--model", str(tiny_tokenizer)]) == 1  # neither -o nor --push_to_hub
    assert "--output_dir" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--column", "photo"],
            "error: Column 'photo' is not in the dataset; its columns are ['image', 'label']",
        ),
        (
            ["--column", "label"],
            "error: Column 'label' holds class label values, not images; name the image column",
        ),
        (["--on_error", "ignore"], "invalid choice: 'ignore'"),
    ],
)
def test_bad_columns_and_options_get_one_clear_line(tmp_path, tiny_tokenizer, capsys, argv, message):
    command = ["encode-dataset", "--model", str(tiny_tokenizer), "--dataset", "fashion_mnist", "--split", "test",
               "--max_samples", "8", "-o", str(tmp_path / "out"), *argv]  # fmt: skip
    try:
        assert main(command) == 1
    except SystemExit as exit_info:  # argparse's own refusals
        assert exit_info.code == 2
    assert message in capsys.readouterr().err


def test_a_column_of_another_modality_is_refused(tmp_path, fashion_subset, capsys):
    audio = tmp_path / "audio-tokenizer"
    config = VQVAEConfig(modality="audio", hop_length=16, hidden_size=8, residual_hidden_size=4,
                         num_residual_layers=1, codebook_size=16, codebook_dim=4)  # fmt: skip
    VQVAEModel(config).save_pretrained(audio)
    VQVAEFeatureExtractor(feature_size=1, sampling_rate=16000, hop_length=16).save_pretrained(audio)
    images = tmp_path / "images"
    datasets.Dataset.from_dict(fashion_subset[:4], features=fashion_subset.features).save_to_disk(str(images))
    argv = ["encode-dataset", "--model", str(audio), "--dataset", str(images), "-o", str(tmp_path / "o")]
    assert main([*argv, "--column", "image"]) == 1
    assert (
        "error: Column 'image' holds image (Image feature) but the tokenizer is an audio model; name the audio "
        "column (--column) or use an image tokenizer." in capsys.readouterr().err
    )
    assert main(argv) == 1  # no audio column to find
    assert "No audio column found among ['image', 'label']" in capsys.readouterr().err


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_kill_inside_the_final_renames_is_finished_by_running_again(
    tmp_path, tokenizer, fashion_subset, monkeypatch
):
    """The main process renames the parts to their final names last; a run that stops between two renames
    (here: the third rename fails, as a kill there would leave it) is finished by the same call."""
    model, processor = tokenizer
    output = tmp_path / "codes"
    renames = []
    real_replace = os.replace

    def failing_replace(source, target):
        if "/data/" in str(target):
            renames.append(target)
            if len(renames) == 3:
                raise OSError("killed here")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="killed here"):
        write_encoded_dataset(model, processor, fashion_subset, output, shard_size=50)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (
        len(list((output / "data").iterdir())) == 2
        and len(list((output / ".parts" / "train").glob("0*"))) == 4
    )
    kept = {path.name: path.stat().st_ino for path in (output / "data").iterdir()}
    summary = write_encoded_dataset(model, processor, fashion_subset, output, shard_size=50)
    assert summary.encoded_rows == 0, "every part was there: nothing encoded again"
    assert {name: (output / "data" / name).stat().st_ino for name in kept} == kept
    loaded = datasets.load_dataset(str(output), split="train")
    assert loaded["index"][:] == list(range(256))
    assert pq.read_metadata(output / "data" / "train-00005-of-00006.parquet").num_rows == 6


def test_streamed_audio_files_give_the_codes_of_their_arrays(tmp_path):
    import soundfile

    torch.manual_seed(0)
    model = VQVAEModel(VQVAEConfig(modality="audio", hop_length=16, hidden_size=8, residual_hidden_size=4,
                                   num_residual_layers=1, codebook_size=16, codebook_dim=4)).eval()  # fmt: skip
    extractor = VQVAEFeatureExtractor(feature_size=1, sampling_rate=16000, hop_length=16)
    waves = [
        np.sin(2 * np.pi * f * np.arange(n) / 16000).astype(np.float32) * 0.5
        for f, n in [(220, 900), (440, 500)]
    ]
    encoded_files = []
    for wave in waves:
        buffer = io.BytesIO()
        soundfile.write(buffer, wave, 16000, format="WAV", subtype="FLOAT")
        encoded_files.append({"bytes": buffer.getvalue(), "path": None})
    # Written as `push_to_hub` stores an Audio column (datasets' own encoder needs torchcodec, absent here).
    features = datasets.Features(audio=datasets.Audio())
    table = pa.table({"audio": pa.array(encoded_files, type=features.arrow_schema.field("audio").type)})
    pq.write_table(table.replace_schema_metadata(features.arrow_schema.metadata), tmp_path / "clips.parquet")
    stream = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "clips.parquet"), split="train", streaming=True
    )
    streamed = encode_dataset(model, extractor, stream)
    arrays = encode_dataset(
        model, extractor, datasets.Dataset.from_dict({"audio": waves, "sampling_rate": [16000] * 2})
    )
    assert streamed["codes"][:] == arrays["codes"][:] and [len(c) for c in streamed["codes"]] == [57, 32]


def test_an_imagefolder_read_whole_or_streamed_gives_the_same_rows(tmp_path, tiny_tokenizer, fashion_subset):
    folder = tmp_path / "images"
    for index, (image, label) in enumerate(
        zip(fashion_subset["image"][:12], fashion_subset["label"][:12], strict=True)
    ):
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        image.save(folder / f"class{label}" / f"{index:03d}.png")
    outputs = {}
    for mode in ("whole", "streamed"):
        outputs[mode] = tmp_path / mode
        argv = ["encode-dataset", "--model", str(tiny_tokenizer), "--dataset", str(folder), "-o", str(outputs[mode]),
                "--shard_size", "5", "--num_workers", "1", *(["--streaming"] if mode == "streamed" else [])]  # fmt: skip
        assert main(argv) == 0
    whole, streamed = (
        datasets.load_dataset(str(outputs[mode]), split="train") for mode in ("whole", "streamed")
    )
    assert len(whole) == 12 and whole.column_names == ["index", "codes", "label"]
    assert whole["codes"][:] == streamed["codes"][:] and whole["label"][:] == streamed["label"][:]
    assert whole.features["label"].names == sorted(
        {f"class{label}" for label in fashion_subset["label"][:12]}
    )
