"""Every consumer takes both code layouts (issue 13): `[B, h, w]` / `[B, t]` and a residual quantizer's
`[B, Q, h, w]` / `[B, Q, t]`: the model (decode with fewer levels, save/load), the code/id mapping, the CLI, the
evaluation's statistics, encode-dataset's rows and the model card; each quantizer type through the model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_config

from vq_tokenizer import CodeTokenMapping, VQVAEImageProcessor, VQVAEModel
from vq_tokenizer.cli import main
from vq_tokenizer.modalities import modality_for
from vq_tokenizer.model_card import build_model_card

TYPES = {
    "vq": {},
    "gumbel": {"quantizer_type": "gumbel", "gumbel_anneal_steps": 4},
    "rvq": {"quantizer_type": "rvq", "num_quantizers": 3, "quantizer_dropout": 0.5},
    "fsq": {"quantizer_type": "fsq", "fsq_levels": [4, 3, 3], "codebook_size": None},
}


def pixels(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, 16, 12, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("name", list(TYPES))
def test_every_type_trains_saves_loads_and_encodes_the_same(tmp_path, name):
    torch.manual_seed(0)
    model = VQVAEModel(tiny_config(**TYPES[name]))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step in range(3):
        output = model(pixel_values=pixels(seed=step))
        expected = (
            output.reconstruction_loss
            + model.config.commitment_cost * output.commitment_loss
            + output.codebook_loss
            + output.extra_loss
        )
        torch.testing.assert_close(output.loss, expected)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    if name == "gumbel":
        assert output.extra_loss > 0 and int(model.quantizer.step) == 3
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = VQVAEModel.from_pretrained(tmp_path).eval()
    assert loaded.config.quantizer_type == model.config.quantizer_type
    with torch.no_grad():
        codes = model.encode(pixels(seed=9)).codes
        assert torch.equal(loaded.encode(pixels(seed=9)).codes, codes)
        torch.testing.assert_close(loaded.decode(codes).reconstruction, model.decode(codes).reconstruction)
    expected_shape = (4, 3, 4, 3) if name == "rvq" else (4, 4, 3)
    assert codes.shape == expected_shape


def test_rvq_model_decodes_any_first_levels_and_refuses_others():
    torch.manual_seed(0)
    model = VQVAEModel(tiny_config(quantizer_type="rvq", num_quantizers=3)).eval()
    model.train()(pixel_values=pixels())  # k-means of every level
    model.eval()
    with torch.no_grad():
        codes = model.encode(pixels()).codes
        for n in range(1, 4):
            reconstruction = model.decode(codes[:, :n]).reconstruction
            assert reconstruction.shape == (4, 1, 16, 12)
            expected = model.decoder(model.quantizer.lookup(codes[:, :n]))
            torch.testing.assert_close(reconstruction, expected)
    for bad in (codes[:, 0], torch.cat([codes, codes[:, :1]], dim=1)):
        with pytest.raises(ValueError, match=r"\[B, Q, h, w\] with 1 <= Q <= 3"):
            model.decode(bad)
    with pytest.raises(ValueError, match=r"must lie in \[0, 31\]"):
        model.decode(codes + 32)


# ------------------------------------------------------------------------------------------- token mapping


def test_mapping_gives_each_level_its_own_ids_position_by_position():
    mapping = CodeTokenMapping(codebook_size=16, grid_shape=(2, 3), offset=10, bos_token_id=0, num_levels=3)
    codes = torch.randint(0, 16, (5, 3, 2, 3), generator=torch.Generator().manual_seed(0))
    ids = mapping.codes_to_ids(codes)
    assert ids.shape == (5, 1 + 2 * 3 * 3) and mapping.sequence_length == 19
    assert mapping.image_token_range == (10, 10 + 3 * 16) and mapping.num_codes_per_item == 18
    body = ids[:, 1:].reshape(5, 6, 3)  # position-major, level-minor
    for level in range(3):
        assert torch.equal(body[:, :, level], codes[:, level].reshape(5, 6) + 10 + 16 * level)
        assert mapping.level_token_range(level) == (10 + 16 * level, 26 + 16 * level)
    assert torch.equal(mapping.ids_to_codes(ids), codes)
    assert torch.equal(mapping.codes_to_ids(codes[0]), ids[:1])  # one item without the batch axis
    swapped = ids.clone()
    swapped[:, [1, 2]] = swapped[:, [2, 1]]  # level 1's id where level 0's belongs
    with pytest.raises(ValueError, match="wrong level"):
        mapping.ids_to_codes(swapped)
    with pytest.raises(ValueError, match=r"shape \[B, 3, 2, 3\]"):
        mapping.codes_to_ids(codes[:, :2])
    assert CodeTokenMapping.from_dict(mapping.to_dict()) == mapping
    assert "num_levels" not in CodeTokenMapping(16, (2, 3)).to_dict()  # single-level files unchanged


def test_mapping_from_an_rvq_config_and_level_restricted_sampling():
    config = tiny_config(quantizer_type="rvq", num_quantizers=2)
    mapping = CodeTokenMapping.from_config(config, input_size=(16, 12), offset=3)
    assert mapping.num_levels == 2 and mapping.grid_shape == (4, 3)
    processor = mapping.logits_processor(prompt_length=1)
    scores = torch.zeros(2, mapping.min_vocab_size)
    for length, allowed in ((1, (3, 35)), (2, (35, 67)), (3, (3, 35))):
        masked = processor(torch.zeros(2, length, dtype=torch.long), scores)
        finite = torch.isfinite(masked[0]).nonzero().flatten()
        assert (int(finite.min()), int(finite.max()) + 1) == allowed


# --------------------------------------------------------------------------------------- CLI, eval, card


@pytest.fixture(scope="module")
def rvq_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rvq-model")
    torch.manual_seed(0)
    model = VQVAEModel(tiny_config(quantizer_type="rvq", num_quantizers=3))
    model.train()(pixel_values=pixels())
    model.eval().save_pretrained(folder)
    VQVAEImageProcessor(num_channels=1, size_divisor=4).save_pretrained(folder)
    return folder


def test_cli_encodes_and_decodes_levels_and_fewer_levels(tmp_path, rvq_model):
    image = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((13, 10)) * 255).astype(np.uint8)).save(image)
    codes_path = tmp_path / "codes.npz"
    assert main(["encode", str(image), "-o", str(codes_path), "--model", str(rvq_model)]) == 0
    with np.load(codes_path) as stored:
        assert stored["in.png"].shape == (3, 4, 3)
        first_two = stored["in.png"][:2]
    assert main(["decode", str(codes_path), "-o", str(tmp_path / "out.png"), "--model", str(rvq_model)]) == 0
    assert Image.open(tmp_path / "out.png").size == (10, 13)
    np.save(tmp_path / "two.npy", first_two)
    assert (
        main(
            ["decode", str(tmp_path / "two.npy"), "-o", str(tmp_path / "two.png"), "--model", str(rvq_model)]
        )
        == 0
    )
    assert Image.open(tmp_path / "two.png").size == (12, 16)  # a .npy decodes to the padded size
    np.save(tmp_path / "four.npy", np.zeros((4, 4, 3), dtype=np.int64))
    assert (
        main(["decode", str(tmp_path / "four.npy"), "-o", str(tmp_path / "x.png"), "--model", str(rvq_model)])
        == 1
    )


def test_evaluation_counts_each_level_apart_and_the_card_says_the_bits(rvq_model):
    model = VQVAEModel.from_pretrained(rvq_model).eval()
    processor = VQVAEImageProcessor.from_pretrained(rvq_model)
    modality = modality_for(model.config)
    inputs = {"pixel_values": pixels(batch=8)}
    with torch.no_grad():
        measured = modality.measure(model, inputs, processor, keep_example=True)
        codes = model.encode(inputs["pixel_values"]).codes
    assert measured.codes.shape == (8, 3 * 4 * 3)
    for level in range(3):
        assert torch.equal(measured.codes.view(8, 3, 12)[:, level], codes[:, level].flatten(1) + 32 * level)
    figures = modality.token_figures(model.config, measured.example)
    assert figures == {"tokens_per_image": 3 * 12, "bits_per_image": 3 * 12 * 5}
    # Audio codes: padding is cut from every level alike.
    audio_codes = torch.arange(2 * 3 * 5).reshape(2, 3, 5)
    audio = modality_for(tiny_config(modality="audio", quantizer_type="rvq", num_quantizers=3))
    mask = {"padding_mask": torch.tensor([[1] * 5 * 64, [1] * 2 * 64 + [0] * 3 * 64])}
    rows = audio.real_codes(
        audio_codes, mask, tiny_config(modality="audio", quantizer_type="rvq", num_quantizers=3)
    )
    assert rows[0].shape == (3, 5) and torch.equal(rows[1], audio_codes[1, :, :2])
    card = str(
        build_model_card(
            model.config, {"psnr": 20.0, "codebook_usage": 0.5, **figures}, {"dataset_name": "x"}
        )
    )
    assert "residual VQ, 3 levels of K = 32 (15 bits per position)" in card
    assert "| tokens | 36 per image (3 per 4x4 pixels) |" in card
    assert "| bits | 180 per image (15 per 4x4 pixels) |" in card
    assert f"{round(0.5 * 96)} of the 96 codes are used" in card
    assert math.isclose(model.config.bits_per_position, 15)
