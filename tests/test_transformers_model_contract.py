"""The contracts transformers' common tests hold a model and its config to (`ModelTesterMixin`,
`ConfigTester`), asserted against `VQVAEModel` and `VQVAEConfig` for images and audio.

Written from reading transformers' test suite (tests/test_modeling_common.py, tests/test_configuration_common.py)
and the flags its conv and codec models (ResNet, EnCodec, DAC) set; what does not apply to a model without
attention, hidden states or token embeddings (attention outputs, head masking, embeddings resizing, SDPA/flash
kernels, generation, tensor parallel plans) is not asserted. Every other contract has a test here:

- config: JSON string/file and `save_pretrained`/`from_pretrained` round trips (subfolder too), common
  `PretrainedConfig` arguments kept, `num_labels`, no warning when built without arguments;
- model: save/load round trip, `from_pretrained(None, config=, state_dict=)`, determinism, batching equivalence,
  tuple vs `ModelOutput` (`return_dict` argument and config), training gradients, activation (gradient)
  checkpointing, `main_input_name` and `input_modalities`, meta-device construction and `init_weights`,
  `_init_weights` covering every parameter and buffer, loading info (missing, unexpected and mismatched keys,
  `ignore_mismatched_sizes`), `device_map` (including `"auto"` with disk offload), `low_cpu_mem_usage`, `dtype`.
"""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import tiny_config
from transformers import AutoConfig, AutoModel, PreTrainedModel, set_seed
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from vq_tokenizer import VQVAEConfig, VQVAEModel, VQVAEOutput
from vq_tokenizer.quantization_vqvae import QUANTIZER_CLASSES

MODALITIES = ["image", "audio"]
AUDIO = dict(modality="audio", downsampling_factor=16, stft_fft_sizes=[64, 128])


def make_config(modality: str, **overrides) -> VQVAEConfig:
    return tiny_config(**(AUDIO if modality == "audio" else {}), **overrides)


def make_inputs(config: VQVAEConfig, batch: int = 3, seed: int = 1) -> dict:
    shape = (
        (batch, config.in_channels, 16, 16)
        if config.modality == "image"
        else (batch, config.in_channels, 256)
    )
    values = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return {config.main_input_name: values}


def trained(config: VQVAEConfig, seed: int = 0) -> VQVAEModel:
    """A model after two training forwards (k-means codebook, EMA statistics), in eval mode."""
    torch.manual_seed(seed)
    model = VQVAEModel(config).train()
    with torch.no_grad():
        for step in range(2):
            model(**make_inputs(config, batch=4, seed=10 + step))
    return model.eval()


def codebook_key(model: VQVAEModel) -> str:
    """The state-dict key of the codebook parameter `[codebook_size, lookup_dim]`."""
    shape = (model.config.codebook_size, model.config.lookup_dim)
    keys = [
        name
        for name, tensor in model.named_parameters()
        if name.startswith("quantizer.") and tuple(tensor.shape) == shape
    ]
    assert len(keys) == 1, keys
    return keys[0]


def assert_state_dicts_equal(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


@pytest.fixture(params=MODALITIES)
def modality(request) -> str:
    return request.param


# ================================================================================================= config


CONFIG_KWARGS = {
    "image": dict(
        modality="image", in_channels=3, hidden_size=37, codebook_size=64, codebook_dim=16, kmeans_iters=2
    ),
    "audio": dict(
        modality="audio", in_channels=2, hidden_size=37, downsampling_factor=32, sampling_rate=24000
    ),
}

COMMON_KWARGS = {
    "return_dict": False,
    "output_hidden_states": True,
    "chunk_size_feed_forward": 5,
    "architectures": ["VQVAEModel"],
    "id2label": {0: "label"},
    "label2id": {"label": 0},
    "problem_type": "regression",
}


def test_config_to_json_string_holds_the_constructor_arguments(modality):
    kwargs = CONFIG_KWARGS[modality]
    saved = json.loads(VQVAEConfig(**kwargs).to_json_string())
    for key, value in kwargs.items():
        assert saved[key] == value, key
    assert saved["model_type"] == "vqvae"


def test_config_json_file_and_save_pretrained_round_trips(modality, tmp_path):
    config = VQVAEConfig(**CONFIG_KWARGS[modality])
    config.to_json_file(tmp_path / "config.json")
    assert VQVAEConfig.from_json_file(tmp_path / "config.json").to_dict() == config.to_dict()

    config.save_pretrained(tmp_path / "saved")
    assert VQVAEConfig.from_pretrained(tmp_path / "saved").to_dict() == config.to_dict()
    loaded = AutoConfig.from_pretrained(tmp_path / "saved")
    assert type(loaded) is VQVAEConfig
    assert {
        **loaded.to_dict(),
        "_name_or_path": "",
    } == config.to_dict()  # AutoConfig records where it came from
    assert VQVAEConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()

    config.save_pretrained(tmp_path / "repo" / "sub")
    assert VQVAEConfig.from_pretrained(tmp_path / "repo", subfolder="sub").to_dict() == config.to_dict()

    with pytest.raises(OSError):
        VQVAEConfig.from_pretrained(tmp_path / "no-such-folder")


def test_config_keeps_the_common_pretrained_config_arguments(modality):
    config = VQVAEConfig(**CONFIG_KWARGS[modality], **COMMON_KWARGS, dtype="float16")
    for key, value in COMMON_KWARGS.items():
        assert getattr(config, key) == value, key
    assert config.dtype == torch.float16


def test_config_num_labels():
    config = VQVAEConfig(num_labels=5)
    assert len(config.id2label) == len(config.label2id) == 5
    config.num_labels = 3
    assert len(config.id2label) == len(config.label2id) == 3


def test_config_builds_without_arguments_and_without_warnings(modality):
    logging.warning_once.cache_clear()
    logger = logging.get_logger("transformers.configuration_utils")
    with CaptureLogger(logger) as captured:
        VQVAEConfig()
        VQVAEConfig(**CONFIG_KWARGS[modality])
    assert captured.out == ""


# ================================================================================================= model


def test_save_load_round_trip(modality, tmp_path):
    config = make_config(modality)
    model = trained(config)
    inputs = make_inputs(config)
    with torch.no_grad():
        first = model(**inputs)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "model.safetensors").exists()
    assert not model.can_generate() and not (tmp_path / "generation_config.json").exists()

    reloaded = VQVAEModel.from_pretrained(tmp_path).eval()
    assert_state_dicts_equal(reloaded.state_dict(), model.state_dict())
    with torch.no_grad():
        second = reloaded(**inputs)
    for name in ("loss", "reconstruction", "codes"):
        assert torch.equal(first[name], second[name]), name

    # from_pretrained adds config fields; they must survive a second round trip.
    reloaded.save_pretrained(tmp_path / "again")
    again = AutoModel.from_pretrained(tmp_path / "again")
    assert type(again) is VQVAEModel
    assert_state_dicts_equal(again.state_dict(), model.state_dict())
    assert all(parameter.is_contiguous() for parameter in again.parameters())


def test_from_pretrained_with_a_state_dict_and_no_checkpoint(modality):
    config = make_config(modality)
    model = trained(config)
    state_dict = model.state_dict()
    loaded = VQVAEModel.from_pretrained(None, config=copy.deepcopy(config), state_dict=state_dict)
    assert_state_dicts_equal(loaded.state_dict(), state_dict)


def test_eval_forward_is_deterministic_and_batch_independent(modality):
    config = make_config(modality)
    model = trained(config)
    inputs = make_inputs(config, batch=3)
    with torch.no_grad():
        first, second = model(**inputs), model(**inputs)
        single = model(**{name: value[:1] for name, value in inputs.items()})
    for name in ("loss", "reconstruction", "codes"):
        assert torch.equal(first[name], second[name]), name
    torch.testing.assert_close(first.reconstruction[:1], single.reconstruction, atol=1e-5, rtol=1e-5)
    assert torch.equal(first.codes[:1], single.codes)


def test_tuple_and_model_output_agree(modality):
    config = make_config(modality)
    model = trained(config)
    inputs = make_inputs(config)
    with torch.no_grad():
        as_dict = model(**inputs, return_dict=True)
        as_tuple = model(**inputs, return_dict=False)
        assert isinstance(as_dict, VQVAEOutput) and isinstance(as_tuple, tuple)
        assert len(as_tuple) == len(as_dict.to_tuple())
        for left, right in zip(as_dict.to_tuple(), as_tuple, strict=True):
            assert torch.equal(left, right)

        encoded = model.encode(**inputs)
        encoded_tuple = model.encode(**inputs, return_dict=False)
        for left, right in zip(encoded.to_tuple(), encoded_tuple, strict=True):
            assert torch.equal(left, right)
        decoded_tuple = model.decode(encoded.codes, return_dict=False)
        assert torch.equal(decoded_tuple[0], model.decode(encoded.codes).reconstruction)

        # `config.return_dict` is the default of every method.
        model.config.return_dict = False
        assert isinstance(model(**inputs), tuple)
        assert isinstance(model.encode(**inputs), tuple)
        assert isinstance(model.decode(encoded.codes), tuple)


def test_training_gives_every_trainable_parameter_a_gradient(modality):
    config = make_config(modality)
    torch.manual_seed(0)
    model = VQVAEModel(config).train()
    output = model(**make_inputs(config))
    assert output.loss.requires_grad
    output.loss.backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name
    assert not model.get_parameter(
        codebook_key(model)
    ).requires_grad  # EMA codebook: no gradient, moved by EMA


# ------------------------------------------------------------------------------- activation checkpointing


def _checkpoint_layers(model: VQVAEModel) -> list[torch.nn.Module]:
    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


def test_activation_checkpointing_enable_and_disable(modality):
    assert VQVAEModel.supports_gradient_checkpointing
    model = VQVAEModel(make_config(modality))
    assert not model.is_activation_checkpointing
    layers = _checkpoint_layers(model)
    assert {type(layer).__name__ for layer in layers} >= {"VQVAEEncoder", "VQVAEDecoder"}

    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    assert all(
        module.gradient_checkpointing
        for module in model.modules()
        if hasattr(module, "gradient_checkpointing")
    )
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing
    assert not any(getattr(module, "gradient_checkpointing", False) for module in model.modules())

    with pytest.warns(FutureWarning):  # transformers' deprecated alias, what `Trainer` and older code call
        model.gradient_checkpointing_enable()
    assert model.is_activation_checkpointing

    config = make_config(modality, gradient_checkpointing=True)  # the old config switch
    assert VQVAEModel(config).is_activation_checkpointing


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_training_step_matches_the_plain_one(modality, use_reentrant):
    """Encoder and decoder recompute in the backward pass; the quantizer (EMA updates, k-means) runs once."""
    config = make_config(modality)
    torch.manual_seed(0)
    plain = VQVAEModel(config).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.activation_checkpointing_enable({"use_reentrant": use_reentrant})
    inputs = make_inputs(config)

    # Checkpointing re-runs a layer's `forward` (up to the last activation the backward needs), whose
    # submodules' hooks fire again (the layer's own do not).
    calls = {"encoder": 0, "decoder": 0, "quantizer": 0}
    watched = {"encoder": checkpointed.encoder.conv_in, "decoder": checkpointed.decoder.conv_in}
    watched["quantizer"] = checkpointed.quantizer
    for name, module in watched.items():
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))

    results = []
    for model in (plain, checkpointed):
        set_seed(42)
        output = model(**inputs)
        output.loss.backward()
        results.append((output, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))

    assert calls == {"encoder": 2, "decoder": 2, "quantizer": 1}
    (plain_output, plain_grads), (checkpointed_output, checkpointed_grads) = results
    assert torch.equal(plain_output.loss, checkpointed_output.loss)
    assert plain_grads.keys() == checkpointed_grads.keys()
    assert plain_grads.keys() == {n for n, p in plain.named_parameters() if p.requires_grad}
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    assert_state_dicts_equal(dict(checkpointed.named_buffers()), dict(plain.named_buffers()))

    # Evaluation and no-grad calls never checkpoint.
    checkpointed.eval()
    calls.update(encoder=0, decoder=0, quantizer=0)
    with torch.no_grad():
        checkpointed(**inputs)
    assert calls == {"encoder": 1, "decoder": 1, "quantizer": 1}


# ------------------------------------------------------------------------------------ inputs and modality


def test_main_input_name_and_input_modalities(modality):
    import inspect

    # The class answers for the first argument of `forward`, as transformers' utilities expect ...
    first_argument = list(inspect.signature(VQVAEModel.forward).parameters)[1]
    assert VQVAEModel.main_input_name == first_argument == "pixel_values"
    # ... and each model for its modality, the same as its config.
    config = make_config(modality)
    model = VQVAEModel(config)
    expected = "pixel_values" if modality == "image" else "input_values"
    assert model.main_input_name == config.main_input_name == expected
    assert model.input_modalities == (modality,)
    assert (
        VQVAEModel.from_pretrained(None, config=config, state_dict=model.state_dict()).main_input_name
        == expected
    )


def test_forward_accepts_and_ignores_labels_and_loss_kwargs(modality):
    """`Trainer` passes a dataset's `label` column as `labels`; a tokenizer has no target but its input."""
    config = make_config(modality)
    model = trained(config)
    inputs = make_inputs(config)
    with torch.no_grad():
        plain = model(**inputs)
        labelled = model(**inputs, labels=torch.arange(3), num_items_in_batch=torch.tensor(3))
    assert torch.equal(plain.loss, labelled.loss) and torch.equal(
        plain.reconstruction, labelled.reconstruction
    )
    assert (
        model.accepts_loss_kwargs is False
    )  # Trainer scales the (mean) loss for gradient accumulation itself
    with pytest.raises(TypeError, match="top_k"):
        model(**inputs, top_k=3)


# ---------------------------------------------------------------------------------- initialisation, meta


@pytest.fixture
def seeded_weight_init(monkeypatch):
    """Seed before each module's `_init_weights`, so that two ways of initialising draw the same numbers."""
    original = PreTrainedModel._initialize_weights

    def seeded(*args, **kwargs):
        set_seed(42)
        original(*args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "_initialize_weights", seeded)


def test_builds_on_the_meta_device(modality):
    with torch.device("meta"):
        model = VQVAEModel(make_config(modality))
    assert all(tensor.device.type == "meta" for tensor in model.state_dict().values())


def test_meta_init_equals_normal_init_in_structure(modality):
    config = make_config(modality)
    from_init = VQVAEModel(copy.deepcopy(config))
    with torch.device("meta"):
        from_meta = VQVAEModel(copy.deepcopy(config))
    assert {k: (v.shape, v.dtype) for k, v in from_meta.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in from_init.state_dict().items()
    }


def _assert_meta_init_sets_every_buffer(config) -> None:
    """Built on the meta device, moved to CPU and `init_weights()`-ed, the model has the buffers of one built
    normally (they hold statistics, not random numbers), and a forward pass touches nothing left on meta (every
    tensor is a registered parameter or buffer)."""
    torch.manual_seed(0)
    from_init = VQVAEModel(copy.deepcopy(config))
    with torch.device("meta"):
        from_meta = VQVAEModel(copy.deepcopy(config))
    from_meta.to_empty(device="cpu")
    from_meta.init_weights()
    assert_state_dicts_equal(dict(from_meta.named_buffers()), dict(from_init.named_buffers()))
    with torch.no_grad():
        from_meta.eval()(**make_inputs(config))


def test_init_weights_sets_every_buffer_from_the_meta_device(modality):
    _assert_meta_init_sets_every_buffer(make_config(modality))


def test_init_weights_covers_every_parameter(modality, seeded_weight_init):
    """Weights missing from a checkpoint get exactly what `__init__` gives them (transformers' contract)."""
    config = make_config(modality)
    from_init = VQVAEModel(copy.deepcopy(config))
    from_nothing, info = VQVAEModel.from_pretrained(
        None, config=copy.deepcopy(config), state_dict={}, output_loading_info=True
    )
    assert not [key for key, value in from_nothing.state_dict().items() if value.device.type == "meta"]
    assert_state_dicts_equal(from_nothing.state_dict(), from_init.state_dict())
    assert info["missing_keys"] == set(from_init.state_dict())


def test_init_weights_does_not_touch_loaded_weights(modality):
    model = trained(make_config(modality))
    state = {key: value.clone() for key, value in model.state_dict().items()}
    model.init_weights()  # every module is marked initialised after loading or __init__
    assert_state_dicts_equal(model.state_dict(), state)


# ---------------------------------------------------------------------------------------- loading info


@pytest.fixture
def saved(modality, tmp_path):
    config = make_config(modality)
    model = trained(config)
    model.save_pretrained(tmp_path)
    return model, tmp_path


def _rewrite_weights(folder, edit) -> None:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def test_missing_weights_are_initialised_and_reported(saved):
    model, folder = saved
    conv_key = next(
        key for key in model.state_dict() if key.startswith("encoder.") and key.endswith(".weight")
    )
    embed_key = codebook_key(model)
    _rewrite_weights(folder, lambda weights: [weights.pop(conv_key), weights.pop(embed_key)])

    logger = logging.get_logger("transformers.modeling_utils")
    with CaptureLogger(logger) as captured:
        loaded, info = VQVAEModel.from_pretrained(folder, output_loading_info=True)
    assert set(info) >= {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
    assert info["missing_keys"] == {conv_key, embed_key}
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert conv_key in captured.out  # the load report names what was initialised

    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        if key in (conv_key, embed_key):
            assert value.shape == expected[key].shape and torch.isfinite(value).all()
            assert not torch.equal(value, expected[key]) and value.abs().sum() > 0
        else:
            assert torch.equal(value, expected[key]), key
    bound = 1.0 / model.config.codebook_size  # the paper's codebook init, Uniform(-1/K, 1/K)
    assert loaded.get_parameter(embed_key).abs().max() <= bound

    # Without output_loading_info the same tensors come back (the missing ones drawn afresh).
    again = VQVAEModel.from_pretrained(folder).state_dict()
    for key, value in loaded.state_dict().items():
        if key not in (conv_key, embed_key):
            assert torch.equal(again[key], value), key


def test_unexpected_weights_are_reported(saved):
    model, folder = saved
    _rewrite_weights(folder, lambda weights: weights.update({"quantizer.extra_codebook": torch.zeros(4, 2)}))
    loaded, info = VQVAEModel.from_pretrained(folder, output_loading_info=True)
    assert info["unexpected_keys"] == {"quantizer.extra_codebook"}
    assert not info["missing_keys"]
    assert_state_dicts_equal(loaded.state_dict(), model.state_dict())


def test_a_checkpoint_without_any_known_weight_reports_every_key_missing(saved):
    model, folder = saved
    save_file({"tensor": torch.tensor([1, 2])}, folder / "model.safetensors", metadata={"format": "pt"})
    loaded, info = VQVAEModel.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == set(loaded.state_dict())
    assert info["unexpected_keys"] == {"tensor"}


def test_a_codebook_of_another_size_is_refused_unless_ignore_mismatched_sizes(saved):
    model, folder = saved
    config = json.loads((folder / "config.json").read_text())
    config["codebook_size"] = 2 * config["codebook_size"]
    (folder / "config.json").write_text(json.dumps(config))

    with pytest.raises(RuntimeError, match="codebook_size") as error:
        VQVAEModel.from_pretrained(folder)
    assert "ignore_mismatched_sizes" in str(error.value)
    with pytest.raises(RuntimeError, match="codebook_size"):
        AutoModel.from_pretrained(folder)

    loaded, info = VQVAEModel.from_pretrained(folder, ignore_mismatched_sizes=True, output_loading_info=True)
    mismatched = {key for key, *_ in info["mismatched_keys"]}
    assert codebook_key(model) in mismatched and all(key.startswith("quantizer.") for key in mismatched)
    assert loaded.get_parameter(codebook_key(loaded)).shape[0] == 2 * model.config.codebook_size
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        if key not in mismatched:
            assert torch.equal(value, expected[key]), key


def test_pickled_weights_are_never_loaded(saved):
    _, folder = saved
    with pytest.raises(ValueError, match="safetensors"):
        VQVAEModel.from_pretrained(folder, use_safetensors=False)


# -------------------------------------------------------------------------- device_map, dtype, low memory


def _encode_decode(model: VQVAEModel, config: VQVAEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        codes = model.encode(**make_inputs(config)).codes
        return codes, model.decode(codes).reconstruction


def test_device_map_cpu_and_low_cpu_mem_usage(saved):
    model, folder = saved
    expected = _encode_decode(model, model.config)
    for kwargs in (
        {"device_map": "cpu"},
        {"device_map": {"": "cpu"}},
        {"device_map": "auto"},
        {"low_cpu_mem_usage": True},
    ):
        loaded = VQVAEModel.from_pretrained(folder, **kwargs)
        assert_state_dicts_equal(loaded.state_dict(), model.state_dict())
        codes, reconstruction = _encode_decode(loaded.eval(), model.config)
        assert torch.equal(codes, expected[0]) and torch.equal(reconstruction, expected[1]), kwargs


@pytest.mark.parametrize("quantizer_type", list(QUANTIZER_CLASSES))
def test_device_map_auto_offloads_to_disk_and_still_encodes(modality, quantizer_type, tmp_path):
    """Too little memory for the model: accelerate keeps part of it on disk and streams it in per call (its
    hooks fire only when a module is called, so every quantizer reaches its tensors through calls)."""
    from accelerate.utils import compute_module_sizes

    model = trained(quantizer_config(quantizer_type, **(AUDIO if modality == "audio" else {})))
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    expected = _encode_decode(model, model.config)
    size = compute_module_sizes(model)[""]
    loaded = VQVAEModel.from_pretrained(
        folder, device_map="auto", max_memory={"cpu": int(0.4 * size)}, offload_folder=tmp_path / "offload"
    ).eval()
    placements = set(loaded.hf_device_map.values())
    assert "disk" in placements, loaded.hf_device_map
    offloaded = [name for name, parameter in loaded.named_parameters() if parameter.device.type == "meta"]
    assert any(name.startswith("quantizer.") for name in offloaded)  # on disk, loaded into place per call
    codes, reconstruction = _encode_decode(loaded, model.config)
    assert torch.equal(codes, expected[0])
    torch.testing.assert_close(reconstruction, expected[1])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**make_inputs(model.config)).loss, model(**make_inputs(model.config)).loss
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bfloat16", torch.float16])
def test_dtype_and_torch_dtype(saved, dtype):
    model, folder = saved
    loaded = VQVAEModel.from_pretrained(folder, dtype=dtype)
    via_alias = VQVAEModel.from_pretrained(folder, torch_dtype=dtype)
    expected = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)
    assert {parameter.dtype for parameter in loaded.parameters()} == {expected}
    assert_state_dicts_equal(via_alias.state_dict(), loaded.state_dict())
    assert VQVAEModel.from_pretrained(folder, dtype="auto").dtype == torch.float32  # as saved
    if expected is torch.bfloat16:
        inputs = {k: v.to(expected) for k, v in make_inputs(model.config).items()}
        with torch.no_grad():
            codes = loaded.eval().encode(**inputs).codes
        assert (
            codes.dtype == torch.long and codes.shape == model.encode(**make_inputs(model.config)).codes.shape
        )


def test_from_pretrained_refuses_a_meta_device_context(saved):
    _, folder = saved
    with torch.device("meta"), pytest.raises(RuntimeError, match="meta device context manager"):
        VQVAEModel.from_pretrained(folder)


def test_load_report_is_quiet_for_a_complete_checkpoint(saved):
    _, folder = saved
    with CaptureLogger(logging.get_logger("transformers.modeling_utils")) as captured:
        VQVAEModel.from_pretrained(folder)
    assert "missing" not in captured.out.lower() and "mismatch" not in captured.out.lower()


# ----------------------------------------------------------------------------------- every quantizer type


def quantizer_config(quantizer_type: str, **overrides) -> VQVAEConfig:
    from tiny import TINY

    options = (
        dict(TINY) if quantizer_type != "fsq" else {k: v for k, v in TINY.items() if k != "codebook_size"}
    )
    return VQVAEConfig(**{**options, **overrides}, quantizer_type=quantizer_type)


def _quantizer_types() -> list[str]:
    from vq_tokenizer.quantization_vqvae import QUANTIZER_CLASSES

    return list(QUANTIZER_CLASSES)


@pytest.mark.parametrize("quantizer_type", _quantizer_types())
def test_every_quantizer_type_initialises_from_the_meta_device(quantizer_type, monkeypatch):
    config = quantizer_config(quantizer_type)
    _assert_meta_init_sets_every_buffer(config)

    original = PreTrainedModel._initialize_weights

    def seeded(*args, **kwargs):
        set_seed(42)
        original(*args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "_initialize_weights", seeded)
    from_init = VQVAEModel(copy.deepcopy(config))
    from_nothing = VQVAEModel.from_pretrained(None, config=copy.deepcopy(config), state_dict={})
    assert_state_dicts_equal(from_nothing.state_dict(), from_init.state_dict())


@pytest.mark.parametrize("quantizer_type", _quantizer_types())
def test_every_quantizer_type_exports(quantizer_type):
    config = quantizer_config(quantizer_type)
    torch.manual_seed(0)
    model = VQVAEModel(config).eval()
    inputs = make_inputs(config)
    with torch.no_grad():
        program = torch.export.export(model, args=(), kwargs=inputs)
        assert torch.equal(program.module()(**inputs).codes, model(**inputs).codes)
