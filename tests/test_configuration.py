"""VQVAEConfig: defaults, derived properties, validation, save/load and the docstring example."""

import doctest
import json
import re

import pytest
from transformers import AutoConfig

from vq_tokenizer import VQVAEConfig

DERIVED = ("num_downsampling_layers", "spatial_dims", "hop_length", "frame_rate", "lookup_dim")


def test_image_defaults():
    config = VQVAEConfig()
    assert config.model_type == "vqvae"
    assert config.modality == "image"
    assert config.in_channels == 1
    assert config.hidden_size == 128
    assert config.num_residual_layers == 2
    assert config.residual_hidden_size == 32
    assert config.downsampling_factor == 4
    assert config.num_downsampling_layers == 2
    assert config.spatial_dims == 2
    assert config.codebook_size == 512
    assert config.codebook_dim == 64
    assert config.lookup_dim == 64
    assert config.codebook_lookup_dim is None
    assert config.commitment_cost == 0.25
    assert config.codebook_update == "ema"
    assert config.ema_decay == 0.99
    assert config.kmeans_init is True
    assert config.dead_code_threshold == 1.0
    assert config.use_l2_normalized_codes is False
    assert config.reconstruction_loss == "mse"
    assert config.main_input_name == "pixel_values"


def test_audio_defaults():
    config = VQVAEConfig(modality="audio")
    assert config.downsampling_factor == 64
    assert config.hop_length == 64
    assert config.num_downsampling_layers == 6
    assert config.spatial_dims == 1
    assert config.reconstruction_loss == "l1"
    assert config.sampling_rate == 16000
    assert config.frame_rate == 16000 / 64
    assert config.main_input_name == "input_values"


def test_hop_length_is_an_alias_for_audio():
    config = VQVAEConfig(modality="audio", hop_length=256, sampling_rate=24000)
    assert config.downsampling_factor == 256
    assert config.hop_length == 256
    assert config.num_downsampling_layers == 8
    assert config.frame_rate == 93.75
    # Agreeing values are accepted; the alias is not stored twice.
    same = VQVAEConfig(modality="audio", hop_length=16, downsampling_factor=16)
    assert same.downsampling_factor == 16
    assert "hop_length" not in same.to_dict()


@pytest.mark.parametrize("factor, layers", [(1, 0), (2, 1), (8, 3), (32, 5)])
def test_num_downsampling_layers(factor, layers):
    assert VQVAEConfig(downsampling_factor=factor).num_downsampling_layers == layers


def test_lookup_dim():
    assert VQVAEConfig(codebook_dim=32).lookup_dim == 32
    config = VQVAEConfig(codebook_dim=32, codebook_lookup_dim=8)
    assert config.lookup_dim == 8
    assert VQVAEConfig(codebook_dim=32, codebook_lookup_dim=32).lookup_dim == 32


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_save_load_round_trip(tmp_path, modality):
    config = VQVAEConfig(
        modality=modality,
        in_channels=2,
        hidden_size=48,
        downsampling_factor=8,
        codebook_size=300,
        codebook_dim=12,
        codebook_lookup_dim=4,
        codebook_update="loss",
        ema_decay=0.9,
        kmeans_init=False,
        dead_code_threshold=0.5,
        use_l2_normalized_codes=True,
        stft_fft_sizes=[64, 128],
        sampling_rate=22050,
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    # Derived values are properties, never written to disk.
    assert not set(DERIVED) & set(saved)
    assert saved["model_type"] == "vqvae"

    for loaded in (VQVAEConfig.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert type(loaded) is VQVAEConfig
        assert loaded.to_diff_dict() == config.to_diff_dict()
        loaded_dict, config_dict = loaded.to_dict(), config.to_dict()
        loaded_dict.pop("_name_or_path"), config_dict.pop("_name_or_path")
        assert loaded_dict == config_dict
        for name in DERIVED:
            assert getattr(loaded, name) == getattr(config, name)
    assert loaded.stft_fft_sizes == [64, 128]
    assert loaded.downsampling_factor == 8


def test_audio_hop_length_round_trip(tmp_path):
    VQVAEConfig(modality="audio", hop_length=128).save_pretrained(tmp_path)
    loaded = VQVAEConfig.from_pretrained(tmp_path)
    assert loaded.hop_length == loaded.downsampling_factor == 128


INVALID = [
    # (kwargs, field named in the message)
    ({"codebook_size": "512"}, "codebook_size"),
    ({"codebook_size": 512.0}, "codebook_size"),
    ({"codebook_size": True}, "codebook_size"),
    ({"codebook_size": 0}, "codebook_size"),
    ({"codebook_size": 1}, "codebook_size"),
    ({"codebook_size": -4}, "codebook_size"),
    ({"codebook_dim": 0}, "codebook_dim"),
    ({"codebook_dim": False}, "codebook_dim"),
    ({"in_channels": 0}, "in_channels"),
    ({"in_channels": True}, "in_channels"),
    ({"hidden_size": -1}, "hidden_size"),
    ({"hidden_size": "128"}, "hidden_size"),
    ({"residual_hidden_size": 0}, "residual_hidden_size"),
    ({"num_residual_layers": -1}, "num_residual_layers"),
    ({"num_residual_layers": 1.5}, "num_residual_layers"),
    ({"downsampling_factor": 3}, "downsampling_factor"),
    ({"downsampling_factor": 12}, "downsampling_factor"),
    ({"downsampling_factor": 0}, "downsampling_factor"),
    ({"downsampling_factor": -4}, "downsampling_factor"),
    ({"downsampling_factor": True}, "downsampling_factor"),
    ({"downsampling_factor": 4.0}, "downsampling_factor"),
    ({"modality": "audio", "hop_length": 100}, "downsampling_factor"),
    ({"modality": "audio", "hop_length": 32, "downsampling_factor": 64}, "hop_length"),
    ({"modality": "image", "hop_length": 4}, "hop_length"),
    ({"modality": "video"}, "modality"),
    ({"modality": None}, "modality"),
    ({"codebook_update": "adam"}, "codebook_update"),
    ({"codebook_update": "EMA"}, "codebook_update"),
    ({"ema_decay": 0.0}, "ema_decay"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"ema_decay": 1.5}, "ema_decay"),
    ({"ema_decay": float("nan")}, "ema_decay"),
    ({"ema_decay": "0.99"}, "ema_decay"),
    ({"ema_epsilon": 0.0}, "ema_epsilon"),
    ({"commitment_cost": -0.25}, "commitment_cost"),
    ({"commitment_cost": float("inf")}, "commitment_cost"),
    ({"kmeans_init": 1}, "kmeans_init"),
    ({"kmeans_iters": -1}, "kmeans_iters"),
    ({"dead_code_threshold": -1.0}, "dead_code_threshold"),
    ({"use_l2_normalized_codes": "yes"}, "use_l2_normalized_codes"),
    ({"codebook_dim": 16, "codebook_lookup_dim": 32}, "codebook_lookup_dim"),
    ({"codebook_lookup_dim": 0}, "codebook_lookup_dim"),
    ({"distance_chunk_size": 0}, "distance_chunk_size"),
    ({"reconstruction_loss": "huber"}, "reconstruction_loss"),
    ({"stft_loss_weight": -1.0}, "stft_loss_weight"),
    ({"stft_fft_sizes": [256, 300]}, "stft_fft_sizes"),
    ({"sampling_rate": 0}, "sampling_rate"),
    ({"sampling_rate": 16000.0}, "sampling_rate"),
]


@pytest.mark.parametrize("kwargs, field", INVALID, ids=[f"{k}" for k, _ in INVALID])
def test_invalid_values_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=re.escape(f"`{field}")):
        VQVAEConfig(**kwargs)


def test_invalid_values_in_saved_config_are_rejected_on_load(tmp_path):
    VQVAEConfig().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    saved["codebook_size"] = "512"
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="`codebook_size`"):
        VQVAEConfig.from_pretrained(tmp_path)


def test_docstring_example_runs():
    """The `Example:` block of the docstring, run as a doctest (the ``` fences stripped first)."""
    blocks = re.findall(r"```python\n(.*?)```", VQVAEConfig.__doc__, flags=re.S)
    assert len(blocks) == 1
    parser = doctest.DocTestParser()
    test = parser.get_doctest(
        blocks[0], globs={}, name="VQVAEConfig", filename="configuration_vqvae.py", lineno=0
    )
    assert len(test.examples) >= 3
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted == len(test.examples)


# ------------------------------------------------------------------------------------------ quantizer types

TYPE_INVALID = [
    ({"quantizer_type": "lfq"}, "quantizer_type"),
    ({"quantizer_type": "gumbel", "gumbel_temperature": 0.0}, "gumbel_temperature"),
    ({"quantizer_type": "gumbel", "gumbel_temperature": -1.0}, "gumbel_temperature"),
    ({"quantizer_type": "gumbel", "gumbel_temperature_min": 2.0}, "gumbel_temperature_min"),
    ({"quantizer_type": "gumbel", "gumbel_temperature_min": 0.0}, "gumbel_temperature_min"),
    ({"quantizer_type": "gumbel", "gumbel_anneal_steps": -1}, "gumbel_anneal_steps"),
    ({"quantizer_type": "gumbel", "gumbel_anneal_steps": 10.5}, "gumbel_anneal_steps"),
    ({"quantizer_type": "gumbel", "gumbel_kl_weight": -0.1}, "gumbel_kl_weight"),
    ({"quantizer_type": "gumbel", "gumbel_diversity_weight": -1.0}, "gumbel_diversity_weight"),
    ({"quantizer_type": "gumbel", "gumbel_diversity_weight": "0.1"}, "gumbel_diversity_weight"),
    ({"quantizer_type": "vq", "gumbel_diversity_weight": 0.1}, "gumbel_diversity_weight"),
    ({"quantizer_type": "gumbel", "gumbel_hard": 1}, "gumbel_hard"),
    ({"quantizer_type": "rvq", "num_quantizers": 0}, "num_quantizers"),
    ({"quantizer_type": "rvq", "num_quantizers": 65}, "num_quantizers"),
    ({"quantizer_type": "rvq", "num_quantizers": 2.0}, "num_quantizers"),
    ({"quantizer_type": "rvq", "quantizer_dropout": 1.5}, "quantizer_dropout"),
    ({"quantizer_type": "rvq", "quantizer_dropout": -0.1}, "quantizer_dropout"),
    ({"quantizer_type": "fsq", "fsq_levels": [8, 1, 5]}, "fsq_levels"),
    ({"quantizer_type": "fsq", "fsq_levels": []}, "fsq_levels"),
    ({"quantizer_type": "fsq", "fsq_levels": 8}, "fsq_levels"),
    ({"quantizer_type": "fsq", "fsq_levels": [8, 5.0]}, "fsq_levels"),
    ({"quantizer_type": "fsq", "fsq_levels": [8, 5, 5, 5], "codebook_size": 512}, "codebook_size"),
    # another type's option
    ({"num_quantizers": 4}, "num_quantizers"),
    ({"quantizer_type": "fsq", "gumbel_hard": True}, "gumbel_hard"),
    ({"quantizer_type": "gumbel", "fsq_levels": [8, 8]}, "fsq_levels"),
    ({"quantizer_type": "rvq", "gumbel_kl_weight": 0.1}, "gumbel_kl_weight"),
]


@pytest.mark.parametrize("kwargs, field", TYPE_INVALID, ids=[f"{k}" for k, _ in TYPE_INVALID])
def test_quantizer_type_options_are_checked(kwargs, field):
    with pytest.raises(ValueError, match=re.escape(f"`{field}")):
        VQVAEConfig(**kwargs)


def test_quantizer_type_defaults_and_derived_values():
    vq = VQVAEConfig()
    assert vq.quantizer_type == "vq" and vq.codebook_size == 512
    assert vq.num_quantizers is None and vq.fsq_levels is None and vq.gumbel_temperature is None
    assert vq.codes_per_position == 1 and vq.bits_per_position == 9
    gumbel = VQVAEConfig(quantizer_type="gumbel", codebook_size=8192)
    assert gumbel.gumbel_temperature == 1.0 and gumbel.gumbel_temperature_min == 1 / 16
    assert gumbel.gumbel_anneal_steps == 5000 and gumbel.gumbel_hard is True
    assert gumbel.gumbel_kl_weight == 5e-4 and gumbel.gumbel_diversity_weight == 0.0
    assert gumbel.codes_layout == "[B, h, w]" and gumbel.bits_per_position == 13
    rvq = VQVAEConfig(quantizer_type="rvq", modality="audio", codebook_size=1024, num_quantizers=8)
    assert rvq.codes_layout == "[B, Q, t]" and rvq.codes_per_position == 8
    assert rvq.bits_per_position == 80 and rvq.quantizer_dropout == 0.0
    assert VQVAEConfig(quantizer_type="rvq").codes_layout == "[B, Q, h, w]"
    fsq = VQVAEConfig(quantizer_type="fsq")
    assert fsq.fsq_levels == [8, 5, 5, 5] and fsq.codebook_size == 1000
    assert VQVAEConfig(quantizer_type="fsq", fsq_levels=(8, 8, 8)).codebook_size == 512
    # The derived size may be passed back (as config.json does) when it agrees.
    assert VQVAEConfig(quantizer_type="fsq", fsq_levels=[2, 3], codebook_size=6).fsq_levels == [2, 3]


@pytest.mark.parametrize(
    "kwargs",
    [
        {
            "quantizer_type": "gumbel",
            "gumbel_temperature": 2.0,
            "gumbel_kl_weight": 0.01,
            "gumbel_diversity_weight": 0.1,
            "gumbel_hard": False,
        },
        {"quantizer_type": "rvq", "num_quantizers": 3, "quantizer_dropout": 0.5, "codebook_size": 64},
        {"quantizer_type": "fsq", "fsq_levels": [7, 5, 3]},
        {"quantizer_type": "vq"},
    ],
    ids=["gumbel", "rvq", "fsq", "vq"],
)
def test_quantizer_type_options_round_trip(tmp_path, kwargs):
    config = VQVAEConfig(**kwargs)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for name, value in kwargs.items():
        assert saved[name] == value, name
    assert "codes_per_position" not in saved and "bits_per_position" not in saved
    loaded = VQVAEConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() | {"_name_or_path": ""} == config.to_dict() | {"_name_or_path": ""}
    assert loaded.codebook_size == config.codebook_size
