"""VQVAEModel: shapes, save/load, return types, determinism, gradients, autocast and input checks."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import tiny_config
from transformers import AutoConfig, AutoModel

from vq_tokenizer import (
    VQVAEConfig,
    VQVAEDecoderOutput,
    VQVAEEncoderOutput,
    VQVAEModel,
    VQVAEOutput,
)
from vq_tokenizer.quantization_vqvae import nearest_codes

# ----------------------------------------------------------------------------------------------- helpers


def tiny_model(seed: int = 0, **overrides) -> VQVAEModel:
    torch.manual_seed(seed)
    return VQVAEModel(tiny_config(**overrides))


def random_inputs(shape, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) * 2 - 1


def input_kwargs(config: VQVAEConfig, inputs: torch.Tensor) -> dict:
    return {config.main_input_name: inputs}


def quantizer_state(model: VQVAEModel) -> dict:
    return {key: value.clone() for key, value in model.quantizer.state_dict().items()}


def assert_states_equal(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


# ------------------------------------------------------------------------------------------------ shapes

IMAGE_CASES = [
    # (downsampling_factor, channels, height, width)
    (1, 1, 12, 20),
    (2, 3, 12, 20),
    (4, 1, 28, 28),
    (4, 3, 36, 4),
    (8, 3, 16, 24),
    (8, 1, 8, 8),
]


@pytest.mark.parametrize("factor, channels, height, width", IMAGE_CASES)
def test_image_shapes(factor, channels, height, width):
    model = tiny_model(downsampling_factor=factor, in_channels=channels).eval()
    pixel_values = random_inputs((2, channels, height, width))
    with torch.no_grad():
        encoded = model.encode(pixel_values)
        assert encoded.codes.dtype == torch.int64
        assert encoded.codes.shape == (2, height // factor, width // factor)
        assert encoded.latents.shape == (2, 8, height // factor, width // factor)
        assert encoded.quantized.shape == encoded.latents.shape
        assert int(encoded.codes.min()) >= 0 and int(encoded.codes.max()) < 32
        decoded = model.decode(encoded.codes)
        assert decoded.reconstruction.shape == pixel_values.shape
        # decode(codes) is the decoder applied to the quantized latents of encode (without gradients, the
        # code vectors themselves).
        assert torch.equal(model.quantizer.lookup(encoded.codes), encoded.quantized)
        assert torch.equal(decoded.reconstruction, model.decoder(encoded.quantized))
        output = model(pixel_values)
    assert output.reconstruction.shape == pixel_values.shape
    assert torch.equal(output.codes, encoded.codes)
    assert output.loss.shape == ()
    assert torch.isfinite(output.loss)


AUDIO_CASES = [
    # (hop_length, channels, length)
    (1, 1, 7),
    (2, 2, 14),
    (4, 1, 4),
    (8, 2, 8 * 7),
    (64, 1, 64),
    (64, 2, 64 * 7),
]


@pytest.mark.parametrize("hop, channels, length", AUDIO_CASES)
def test_audio_shapes(hop, channels, length):
    model = tiny_model(modality="audio", hop_length=hop, in_channels=channels).eval()
    input_values = random_inputs((3, channels, length))
    with torch.no_grad():
        encoded = model.encode(input_values)
        assert encoded.codes.dtype == torch.int64
        assert encoded.codes.shape == (3, length // hop)
        assert encoded.latents.shape == (3, 8, length // hop)
        decoded = model.decode(encoded.codes)
        assert decoded.reconstruction.shape == input_values.shape
        output = model(input_values=input_values)
    assert output.reconstruction.shape == input_values.shape
    assert torch.equal(output.codes, encoded.codes)
    assert torch.isfinite(output.loss)


def test_train_mode_forward_shapes_and_statistics():
    model = tiny_model(in_channels=3).train()
    pixel_values = random_inputs((4, 3, 12, 20))
    output = model(pixel_values)
    assert output.codes.shape == (4, 3, 5)
    assert output.reconstruction.shape == pixel_values.shape
    for name in ("loss", "reconstruction_loss", "commitment_loss", "codebook_loss", "perplexity"):
        value = getattr(output, name)
        assert value.shape == () and torch.isfinite(value), name
    used = output.codes.unique().numel()
    assert output.codebook_usage.item() == pytest.approx(used / 32)
    assert 1.0 <= output.perplexity.item() <= used + 1e-4
    # With EMA updates the codebook loss is identically zero; loss is the documented sum.
    assert output.codebook_loss.item() == 0.0
    expected = output.reconstruction_loss + 0.25 * output.commitment_loss + output.codebook_loss
    assert torch.allclose(output.loss, expected)


def test_padding_mask_excludes_padding_from_the_loss():
    model = tiny_model(modality="audio", hop_length=4, stft_loss_weight=0.0).eval()
    input_values = random_inputs((2, 1, 32))
    padding_mask = torch.ones(2, 32, dtype=torch.long)
    padding_mask[:, 20:] = 0
    with torch.no_grad():
        masked = model(input_values, padding_mask=padding_mask)
        error = (masked.reconstruction - input_values).abs()[..., :20]
    # l1 over real samples only
    assert masked.reconstruction_loss.item() == pytest.approx(error.mean().item(), rel=1e-5)


# ------------------------------------------------------------------------------------------- save / load


def trained_model(**overrides) -> tuple[VQVAEModel, torch.Tensor]:
    """A tiny model after one training step (k-means done, EMA statistics non-trivial)."""
    model = tiny_model(**overrides).train()
    inputs = random_inputs((4, 1, 16, 16)) if model.config.modality == "image" else random_inputs((4, 1, 64))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(inputs).loss.backward()
    optimizer.step()
    return model.eval(), inputs


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_save_pretrained_from_pretrained_identical(tmp_path, modality):
    overrides = {"modality": modality} if modality == "image" else {"modality": modality, "hop_length": 8}
    model, inputs = trained_model(**overrides)
    assert int(model.quantizer.initialized) == 1
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json"} <= files
    assert not [name for name in files if name.endswith(".bin")]
    assert set(load_file(tmp_path / "model.safetensors")) == set(model.state_dict())

    with torch.no_grad():
        expected = model(inputs)
        expected_codes = model.encode(inputs).codes
        for loaded in (VQVAEModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
            assert type(loaded) is VQVAEModel
            assert not loaded.training
            assert_states_equal(model.state_dict(), loaded.state_dict())
            actual = loaded(inputs)
            assert torch.equal(actual.reconstruction, expected.reconstruction)
            assert torch.equal(actual.codes, expected.codes)
            assert torch.equal(actual.loss, expected.loss)
            assert torch.equal(loaded.encode(inputs).codes, expected_codes)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is VQVAEConfig
    assert config.modality == modality
    from_config = AutoModel.from_config(config)
    assert type(from_config) is VQVAEModel


def test_tuple_and_dict_outputs_agree():
    model, pixel_values = trained_model()
    with torch.no_grad():
        as_dict = model(pixel_values)
        as_tuple = model(pixel_values, return_dict=False)
        encoded = model.encode(pixel_values)
        encoded_tuple = model.encode(pixel_values, return_dict=False)
        decoded = model.decode(encoded.codes)
        decoded_tuple = model.decode(encoded.codes, return_dict=False)
    assert isinstance(as_dict, VQVAEOutput) and isinstance(as_tuple, tuple)
    assert isinstance(encoded, VQVAEEncoderOutput) and isinstance(decoded, VQVAEDecoderOutput)
    assert len(as_tuple) == len(as_dict.to_tuple()) == 9  # extra_loss last (zero for VQ)
    assert as_dict.loss is as_dict[0]  # loss first
    for left, right in zip(as_dict.to_tuple(), as_tuple, strict=True):
        assert torch.equal(left, right)
    assert len(encoded_tuple) == 3
    for left, right in zip((encoded.codes, encoded.latents, encoded.quantized), encoded_tuple, strict=True):
        assert torch.equal(left, right)
    assert len(decoded_tuple) == 1 and torch.equal(decoded_tuple[0], decoded.reconstruction)

    model.config.return_dict = False
    with torch.no_grad():
        by_config = model(pixel_values)
    assert isinstance(by_config, tuple) and torch.equal(by_config[1], as_dict.reconstruction)


def test_determinism_under_manual_seed():
    first, second = tiny_model(seed=3), tiny_model(seed=3)
    assert_states_equal(first.state_dict(), second.state_dict())
    other = tiny_model(seed=4)
    assert not torch.equal(other.encoder.conv_out.weight, first.encoder.conv_out.weight)

    pixel_values = random_inputs((4, 1, 16, 16))
    outputs = []
    for model in (first, second):
        torch.manual_seed(123)  # k-means and restarts draw candidates from the global generator
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for _ in range(2):
            output = model(pixel_values)
            optimizer.zero_grad()
            output.loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            outputs.append(model(pixel_values))
    assert_states_equal(first.state_dict(), second.state_dict())
    assert torch.equal(outputs[0].reconstruction, outputs[1].reconstruction)
    assert torch.equal(outputs[0].codes, outputs[1].codes)
    # The two steps really trained: the weights moved away from the untrained copy.
    assert not torch.equal(first.encoder.conv_out.weight, tiny_model(seed=3).encoder.conv_out.weight)


# ---------------------------------------------------------------------------------------------- gradients


def test_straight_through_gradients_reach_the_encoder():
    model = tiny_model().train()
    output = model(random_inputs((2, 1, 16, 16)))
    # The reconstruction loss alone reaches the encoder only through the straight-through estimator.
    output.reconstruction_loss.backward()
    for name, parameter in model.encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    for name, parameter in model.decoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_codebook_loss_update_gives_codebook_gradients():
    model = tiny_model(codebook_update="loss", kmeans_init=False, dead_code_threshold=0.0).train()
    embed = model.quantizer.embed
    assert embed.requires_grad
    before = embed.detach().clone()
    output = model(random_inputs((2, 1, 16, 16)))
    # No EMA: a forward pass leaves the codebook to the optimiser.
    assert torch.equal(embed.detach(), before)
    assert output.codebook_loss.item() > 0
    output.loss.backward()
    used = output.codes.unique()
    assert embed.grad is not None
    assert (embed.grad[used].abs().sum(1) > 0).all()
    unused = torch.ones(32, dtype=torch.bool)
    unused[used] = False
    assert torch.equal(embed.grad[unused], torch.zeros_like(embed.grad[unused]))


def test_ema_codebook_has_no_gradient_but_moves_in_train_mode():
    model = tiny_model(kmeans_init=False, dead_code_threshold=0.0).train()
    embed = model.quantizer.embed
    assert not embed.requires_grad
    assert embed not in set(p for p in model.parameters() if p.requires_grad)
    before = embed.detach().clone()
    output = model(random_inputs((2, 1, 16, 16)))
    output.loss.backward()
    assert embed.grad is None
    changed = (embed.detach() - before).abs().sum(1) > 0
    used = output.codes.unique()
    assert changed[used].all()


@pytest.mark.parametrize("kmeans_pending", [True, False])
def test_eval_mode_never_changes_the_quantizer(kmeans_pending):
    if kmeans_pending:
        model = tiny_model().eval()
        assert int(model.quantizer.initialized) == 0
    else:
        model, _ = trained_model()
    pixel_values = random_inputs((4, 1, 16, 16), seed=7)
    before = quantizer_state(model)
    model_before = {key: value.clone() for key, value in model.state_dict().items()}
    for _ in range(3):
        output = model(pixel_values)
        output.loss.backward()  # gradients may exist; nothing is stepped
    model.encode(pixel_values)
    model.decode(output.codes)
    assert_states_equal(before, quantizer_state(model))
    assert_states_equal(model_before, model.state_dict())
    assert int(model.quantizer.initialized) == (0 if kmeans_pending else 1)


@pytest.mark.parametrize("kmeans_pending", [True, False])
def test_encode_in_train_mode_never_changes_the_model(kmeans_pending):
    model = tiny_model() if kmeans_pending else trained_model()[0]
    pixel_values = random_inputs((4, 1, 16, 16), seed=7)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    model.train()
    for _ in range(2):
        encoded = model.encode(pixel_values)
        model.decode(encoded.codes)
    model.eval()
    model(pixel_values).loss.backward()
    assert_states_equal(before, model.state_dict())
    # The training forward is what learns.
    model.train()
    model(pixel_values)
    assert not torch.equal(before["quantizer.embed"], model.state_dict()["quantizer.embed"])


def test_loaded_model_keeps_its_codebook_when_training_resumes(tmp_path):
    model, pixel_values = trained_model()
    model.save_pretrained(tmp_path)
    loaded = VQVAEModel.from_pretrained(tmp_path).train()
    before = quantizer_state(loaded)
    loaded.quantizer.initialize(loaded.encoder(pixel_values))  # k-means was done before saving
    assert_states_equal(before, quantizer_state(loaded))


# ---------------------------------------------------------------------------------------------- autocast


def test_bf16_autocast_searches_in_fp32():
    model, pixel_values = trained_model(codebook_size=64)  # codebook fitted to the latents by k-means
    embed = model.quantizer.embed.detach()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        encoded = model.encode(pixel_values)
        output = model(pixel_values)
    assert encoded.latents.dtype == torch.bfloat16  # the convolutions did run in bf16
    assert torch.isfinite(output.loss)
    assert output.reconstruction.shape == pixel_values.shape
    flat = encoded.latents.movedim(1, -1).reshape(-1, 8)

    # The fp32 search on the same (bf16-valued) latents, outside autocast.
    fp32_codes, _ = nearest_codes(flat.float(), embed)
    assert torch.equal(encoded.codes.flatten(), fp32_codes)
    assert torch.equal(output.codes, encoded.codes)

    # And that matters: the same search done in bf16 picks other codes for many of these vectors.
    distances_bf16 = embed.bfloat16().pow(2).sum(1) - 2 * flat @ embed.bfloat16().t()
    bf16_codes = distances_bf16.argmin(1)
    assert (bf16_codes != fp32_codes).float().mean() > 0.2


def test_bf16_autocast_training_step():
    model = tiny_model().train()
    pixel_values = random_inputs((2, 1, 16, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(pixel_values)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert model.quantizer.embed.dtype == torch.float32
    assert model.encoder.conv_out.weight.grad.abs().sum() > 0


# -------------------------------------------------------------------------------------------- bad inputs


IMAGE_BAD_INPUTS = [
    # (description, inputs, message fragment)
    ("rank 3", torch.zeros(1, 16, 16), "unsqueeze"),
    ("rank 5", torch.zeros(1, 1, 1, 16, 16), r"\[B, C, H, W\]"),
    ("channels", torch.zeros(1, 3, 16, 16), "channels"),
    ("int dtype", torch.zeros(1, 1, 16, 16, dtype=torch.uint8), "float"),
    ("bool dtype", torch.zeros(1, 1, 16, 16, dtype=torch.bool), "float"),
    ("nan", torch.zeros(1, 1, 16, 16).index_fill_(2, torch.tensor([3]), float("nan")), "NaN"),
    ("inf", torch.zeros(1, 1, 16, 16).index_fill_(3, torch.tensor([0]), float("inf")), "inf"),
    ("-inf", torch.full((1, 1, 16, 16), -float("inf")), "inf"),
    ("empty batch", torch.zeros(0, 1, 16, 16), "empty batch"),
    ("not a multiple", torch.zeros(1, 1, 16, 18), "multiples of the downsampling factor 4"),
    ("zero size", torch.zeros(1, 1, 0, 16), "non-zero"),
    ("list", [[[[0.0] * 16] * 16]], "torch.Tensor"),
    ("none", None, "Pass `pixel_values`"),
]


@pytest.mark.parametrize("method", ["forward", "encode"])
@pytest.mark.parametrize(
    "description, inputs, message", IMAGE_BAD_INPUTS, ids=[c[0] for c in IMAGE_BAD_INPUTS]
)
def test_bad_image_inputs(method, description, inputs, message):
    model = tiny_model().eval()
    with pytest.raises(ValueError, match=message):
        getattr(model, method)(inputs)


AUDIO_BAD_INPUTS = [
    ("rank 2", torch.zeros(1, 64), "unsqueeze"),
    ("rank 4", torch.zeros(1, 1, 8, 64), r"\[B, C, T\]"),
    ("channels", torch.zeros(1, 2, 64), "channels"),
    ("int dtype", torch.zeros(1, 1, 64, dtype=torch.int16), "float"),
    ("nan", torch.full((1, 1, 64), float("nan")), "NaN"),
    ("empty batch", torch.zeros(0, 1, 64), "empty batch"),
    ("not a multiple", torch.zeros(1, 1, 60), "multiples of the downsampling factor 8"),
    ("zero length", torch.zeros(1, 1, 0), "non-zero"),
]


@pytest.mark.parametrize("method", ["forward", "encode"])
@pytest.mark.parametrize(
    "description, inputs, message", AUDIO_BAD_INPUTS, ids=[c[0] for c in AUDIO_BAD_INPUTS]
)
def test_bad_audio_inputs(method, description, inputs, message):
    model = tiny_model(modality="audio", hop_length=8).eval()
    with pytest.raises(ValueError, match=message):
        getattr(model, method)(input_values=inputs)


@pytest.mark.parametrize("method", ["forward", "encode"])
def test_both_pixel_values_and_input_values(method):
    model = tiny_model().eval()
    pixel_values = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match="not both"):
        getattr(model, method)(pixel_values=pixel_values, input_values=pixel_values)


def test_bad_padding_mask():
    image_model = tiny_model().eval()
    with pytest.raises(ValueError, match="padding_mask"):
        image_model(torch.zeros(1, 1, 16, 16), padding_mask=torch.ones(1, 16))
    audio_model = tiny_model(modality="audio", hop_length=8).eval()
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        audio_model(torch.zeros(2, 1, 64), padding_mask=torch.ones(2, 32))


BAD_CODES = [
    # (modality, codes, message fragment)
    ("image", torch.tensor([[[0, -1], [2, 3]]]), r"\[0, 31\]"),
    ("image", torch.tensor([[[0, 32], [2, 3]]]), r"\[0, 31\]"),
    ("image", torch.full((1, 2, 2), 10**6), r"\[0, 31\]"),
    ("image", torch.zeros(1, 2, 2), "integer"),
    ("image", torch.zeros(1, 2, 2, dtype=torch.bool), "integer"),
    ("image", torch.zeros(1, 4, dtype=torch.long), r"\[B, h, w\]"),
    ("image", torch.zeros(1, 1, 2, 2, dtype=torch.long), r"\[B, h, w\]"),
    ("image", torch.zeros(0, 2, 2, dtype=torch.long), "empty"),
    ("audio", torch.zeros(1, 2, 2, dtype=torch.long), r"\[B, t\]"),
    ("audio", torch.zeros(4, dtype=torch.long), r"\[B, t\]"),
    ("audio", torch.tensor([[5, 40]]), r"\[0, 31\]"),
    ("audio", torch.tensor([[0.0, 1.0]]), "integer"),
    ("audio", [[0, 1]], "LongTensor"),
]


@pytest.mark.parametrize("modality, codes, message", BAD_CODES)
def test_bad_codes(modality, codes, message):
    model = tiny_model(modality=modality).eval()
    with pytest.raises(ValueError, match=message):
        model.decode(codes)


def test_int32_codes_are_accepted():
    model = tiny_model().eval()
    codes = torch.randint(0, 32, (2, 3, 5))
    with torch.no_grad():
        expected = model.decode(codes).reconstruction
        actual = model.decode(codes.int()).reconstruction
    assert torch.equal(actual, expected)


# -------------------------------------------------------------------------------- loading bad checkpoints


@pytest.mark.parametrize("field, value", [("codebook_size", 64), ("codebook_size", 16), ("codebook_dim", 4)])
def test_checkpoint_of_another_codebook_shape_is_refused_unless_asked(tmp_path, field, value):
    """transformers' rule: mismatched shapes raise, unless `ignore_mismatched_sizes=True` re-initialises them."""
    model, _ = trained_model()
    model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config[field] = value
    path.write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="codebook_size, codebook_dim"):
        VQVAEModel.from_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes=True"):
        AutoModel.from_pretrained(tmp_path)
    loaded, info = VQVAEModel.from_pretrained(
        tmp_path, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert {key for key, *_ in info["mismatched_keys"]} >= {"quantizer.embed"}
    assert getattr(loaded.config, field) == value
    assert torch.equal(loaded.encoder.downsample[0].weight, model.encoder.downsample[0].weight)


@pytest.mark.parametrize("key", ["quantizer.embed", "quantizer.cluster_size", "encoder.conv_in.weight"])
def test_checkpoint_missing_a_tensor_is_initialised_and_reported(tmp_path, key):
    model, _ = trained_model()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights[key]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded, info = VQVAEModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == {key}
    expected = model.state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, expected[name]) != (name == key), name  # only the missing one is new


def test_checkpoint_with_an_extra_tensor_is_reported(tmp_path):
    model, _ = trained_model()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["quantizer.extra_codebook"] = torch.zeros(32, 8)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded, info = VQVAEModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == {"quantizer.extra_codebook"} and not info["missing_keys"]
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
