"""Codes <-> input_ids: the mapping, its checks, its logits processor, saving it beside a model and on the Hub."""

from __future__ import annotations

import math
import re

import pytest
import torch
from tiny import tiny_config

from vq_tokenizer import CodeTokenMapping, VQVAEConfig, VQVAEModel
from vq_tokenizer.token_mapping import TOKEN_MAPPING_NAME


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
    tmp_path, hub_api, hub_token, hub_repo_id, hub_cache
):
    model = VQVAEModel(tiny_config(in_channels=1))
    tokenizer_folder = tmp_path / "no-mapping"
    model.save_pretrained(tokenizer_folder)
    mapping = CodeTokenMapping.from_config(model.config, grid_shape=(7, 7), offset=10, eos_token_id=0)
    folder = tmp_path / "tokenizer"
    model.save_pretrained(folder)
    path = mapping.save_pretrained(folder)
    assert path == folder / TOKEN_MAPPING_NAME
    assert CodeTokenMapping.from_pretrained(folder) == mapping
    with pytest.raises(FileNotFoundError, match=TOKEN_MAPPING_NAME):
        CodeTokenMapping.from_pretrained(tokenizer_folder)  # a tokenizer folder without a mapping

    model.push_to_hub(hub_repo_id, token=hub_token)
    mapping.push_to_hub(hub_repo_id, token=hub_token)
    assert {"model.safetensors", "config.json", TOKEN_MAPPING_NAME} <= set(
        hub_api.list_repo_files(hub_repo_id)
    )
    assert CodeTokenMapping.from_pretrained(hub_repo_id, token=hub_token) == mapping
