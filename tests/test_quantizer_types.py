"""The quantizer types of issue 13 (`"gumbel"`, `"rvq"`, `"fsq"`, with `"vq"` where all four are compared): the
mathematics of each, the pure lookup path, no host reads in training, bf16 autocast, two real processes."""

import math

import pytest
import torch
from test_quantizer import HostReads, assert_same_state, clustered_latents, state
from two_ranks import run_two_ranks

from vq_tokenizer import VQVAEConfig
from vq_tokenizer.quantization_vqvae import (
    VQVAEFiniteScalarQuantizer,
    VQVAEGumbelQuantizer,
    VQVAEResidualVectorQuantizer,
    VQVAEVectorQuantizer,
    build_quantizer,
)

TYPES = {
    "vq": {"quantizer_type": "vq", "codebook_size": 64},
    "gumbel": {"quantizer_type": "gumbel", "codebook_size": 64, "gumbel_anneal_steps": 10},
    "gumbel-soft": {"quantizer_type": "gumbel", "codebook_size": 64, "gumbel_hard": False},
    "rvq": {"quantizer_type": "rvq", "codebook_size": 16, "num_quantizers": 3},
    "rvq-dropout": {
        "quantizer_type": "rvq",
        "codebook_size": 16,
        "num_quantizers": 3,
        "quantizer_dropout": 0.5,
        "codebook_lookup_dim": 4,
        "codebook_update": "loss",
    },
    "fsq": {"quantizer_type": "fsq", "fsq_levels": [5, 4, 3]},
}


def make(dim: int = 8, seed: int = 0, modality: str = "audio", **overrides):
    torch.manual_seed(seed)
    return build_quantizer(VQVAEConfig(modality=modality, codebook_dim=dim, **overrides))


def training_step(quantizer, latents):
    """What VQVAEModel.forward does with its quantizer in training."""
    quantizer.initialize(latents)
    return quantizer.update(latents, quantizer.quantize(latents))


def varied_latents(dim: int = 8, batch: int = 4, length: int = 50, seed: int = 1, scale: float = 1.0):
    return scale * torch.randn(batch, dim, length, generator=torch.Generator().manual_seed(seed))


def test_build_quantizer_follows_the_config():
    for name, cls in (
        ("vq", VQVAEVectorQuantizer),
        ("gumbel", VQVAEGumbelQuantizer),
        ("rvq", VQVAEResidualVectorQuantizer),
        ("fsq", VQVAEFiniteScalarQuantizer),
    ):
        assert type(build_quantizer(VQVAEConfig(quantizer_type=name))) is cls


# ------------------------------------------------------------------------------------------------ all types


@pytest.mark.parametrize("name", list(TYPES))
def test_quantize_lookup_and_backward_change_nothing_in_train_mode(name):
    quantizer = make(**TYPES[name]).train()
    latents = varied_latents()
    training_step(quantizer, latents)  # k-means done, a step taken: the state is not the initial one
    before = state(quantizer)
    first = None
    for _ in range(2):
        inputs = latents.clone().requires_grad_()
        output = quantizer.quantize(inputs)
        loss = output.quantized.square().mean() + output.commitment_loss + output.codebook_loss
        (loss + output.extra_loss).backward()
        assert inputs.grad is not None and inputs.grad.abs().sum() > 0
        quantizer(inputs)  # forward is quantize
        quantizer(codes=output.codes)  # and lookup
        quantizer.lookup(output.codes)
        if first is None:
            first = output.codes
        else:  # the training noise is a function of the state: the same codes again
            assert torch.equal(first, output.codes)
    assert_same_state(before, state(quantizer))


@pytest.mark.parametrize("name", list(TYPES))
def test_eval_quantize_equals_lookup_of_its_codes(name):
    quantizer = make(**TYPES[name]).train()
    latents = varied_latents()
    for _ in range(2):
        training_step(quantizer, latents)
    quantizer.eval()
    with torch.no_grad():
        output = quantizer(latents)
        again = quantizer(latents)
        looked_up = quantizer(codes=output.codes)
    assert torch.equal(output.codes, again.codes)
    torch.testing.assert_close(looked_up, output.quantized, rtol=0, atol=1e-6)
    expected = (4, 3, 50) if name.startswith("rvq") else (4, 50)
    assert output.codes.shape == expected and output.codes.dtype == torch.long
    assert int(output.codes.min()) >= 0 and int(output.codes.max()) < quantizer.config.codebook_size
    assert output.quantized.shape == latents.shape
    with pytest.raises(ValueError, match="one of `latents`"):
        quantizer()


@pytest.mark.parametrize("name", list(TYPES))
def test_training_steps_read_nothing_back_to_the_host(name):
    quantizer = make(**TYPES[name]).train()
    latents = varied_latents()
    training_step(quantizer, latents)
    with HostReads() as reads:
        for _ in range(3):
            training_step(quantizer, latents)
    assert reads.reads == 0


@pytest.mark.parametrize("name", list(TYPES))
def test_codes_under_bf16_autocast_equal_float32_codes(name):
    quantizer = make(**TYPES[name]).train()
    latents = varied_latents()
    training_step(quantizer, latents)
    quantizer.eval()
    with torch.no_grad():
        expected = quantizer(latents).codes
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = quantizer(latents)
    assert torch.equal(output.codes, expected)


# -------------------------------------------------------------------------------------------------------- FSQ


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [2, 3, 4], [2], [7]])
def test_fsq_codes_and_level_vectors_map_one_to_one(levels):
    quantizer = make(dim=len(levels), quantizer_type="fsq", fsq_levels=levels)
    size = math.prod(levels)
    assert quantizer.config.codebook_size == size
    codes = torch.arange(size)
    digits = quantizer.codes_to_digits(codes)
    assert digits.shape == (size, len(levels))
    assert all(int(digits[:, j].max()) == level - 1 for j, level in enumerate(levels))
    assert torch.equal(quantizer.digits_to_codes(digits), codes)
    vectors = quantizer.lookup(codes[None]).squeeze(0).t()  # no projection: the level vectors themselves
    assert vectors.shape == (size, len(levels))
    assert torch.unique(vectors, dim=0).shape[0] == size  # distinct
    assert float(vectors.abs().max()) < 1.0
    # Each level vector, as a latent, is quantized back to its own code.
    latents = torch.atanh(vectors).t()[None]
    assert torch.equal(quantizer.quantize(latents).codes[0], codes)
    # Symmetric levels: the values of each dimension are those of -values.
    for j, level in enumerate(levels):
        values = torch.unique(vectors[:, j])
        assert values.numel() == level
        torch.testing.assert_close(values, -values.flip(0))


def test_fsq_rounding_passes_gradients_straight_through():
    levels = [8, 5, 5, 5]
    latents = varied_latents(dim=4, scale=2.0).requires_grad_()
    weights = torch.randn(latents.shape, generator=torch.Generator().manual_seed(3))
    quantizer = make(dim=4, quantizer_type="fsq", fsq_levels=levels)
    (quantizer.quantize(latents).quantized * weights).sum().backward()
    # d/dz of tanh(z) rounded, straight through: the tanh's derivative, exactly.
    expected = weights * (1 - torch.tanh(latents.detach()) ** 2)
    torch.testing.assert_close(latents.grad, expected)
    # With projections (D = 16): the gradient of project_out(tanh(project_in(z))), as if no rounding happened.
    projected = make(dim=16, quantizer_type="fsq", fsq_levels=levels)
    latents = varied_latents(dim=16).requires_grad_()
    weights = torch.randn(latents.shape, generator=torch.Generator().manual_seed(4))
    (projected.quantize(latents).quantized * weights).sum().backward()
    reference = latents.detach().clone().requires_grad_()
    smooth = projected.project_out(torch.tanh(projected.project_in(reference.movedim(1, -1)))).movedim(-1, 1)
    (smooth * weights).sum().backward()
    torch.testing.assert_close(latents.grad, reference.grad)
    assert projected.project_in.weight.grad is not None and projected.project_out.weight.grad is not None


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [8, 8, 8], [2, 2, 3]])
def test_fsq_uses_every_code_on_varied_inputs(levels):
    quantizer = make(dim=len(levels), quantizer_type="fsq", fsq_levels=levels).train()
    # Latents spread evenly over the bounded range (tanh(z) uniform in (-1, 1)): every code, near-uniformly.
    bounded = torch.rand(8, len(levels), 4096, generator=torch.Generator().manual_seed(5)) * 1.998 - 0.999
    output = training_step(quantizer, torch.atanh(bounded))
    assert output.codebook_usage.item() == 1.0
    assert output.perplexity.item() > 0.95 * math.prod(levels)
    # Gaussian latents (std 2) reach almost every code too.
    gaussian = training_step(quantizer, varied_latents(dim=len(levels), batch=16, length=4096, scale=2.0))
    assert gaussian.codebook_usage.item() >= 0.95


def test_fsq_has_no_codebook_state_and_no_codebook_loss():
    quantizer = make(dim=16, quantizer_type="fsq", fsq_levels=[8, 5, 5, 5]).train()
    assert sorted(quantizer.state_dict()) == [
        "project_in.bias",
        "project_in.weight",
        "project_out.bias",
        "project_out.weight",
    ]
    assert list(make(dim=4, quantizer_type="fsq", fsq_levels=[8, 5, 5, 5]).state_dict()) == []
    output = training_step(quantizer, varied_latents(dim=16))
    assert output.commitment_loss == 0 and output.codebook_loss == 0 and output.extra_loss == 0


# -------------------------------------------------------------------------------------------------------- RVQ


def test_rvq_residual_norm_does_not_grow_with_each_level_after_kmeans_init():
    latents, _ = clustered_latents()  # [1, 8, 1024]: 64 tight clusters far from the origin
    quantizer = make(
        quantizer_type="rvq", codebook_size=16, num_quantizers=5, dead_code_threshold=0.0
    ).train()
    assert not any(int(level.initialized) for level in quantizer.levels)
    training_step(quantizer, latents)
    assert all(int(level.initialized) for level in quantizer.levels)
    quantizer.eval()
    with torch.no_grad():
        codes = quantizer(latents).codes
        norms = [float(latents.square().sum(1).mean())]
        for n in range(1, quantizer.num_quantizers + 1):
            norms.append(float((latents - quantizer.lookup(codes[:, :n])).square().sum(1).mean()))
    assert all(later <= earlier * (1 + 1e-6) for earlier, later in zip(norms, norms[1:], strict=False)), norms
    assert (
        norms[-1] < 0.05 * norms[1] < 0.05 * norms[0]
    )  # each level refines: 16 codes x 5 levels for 64 clusters


def test_rvq_decodes_the_first_n_levels_for_every_n():
    quantizer = make(quantizer_type="rvq", codebook_size=16, num_quantizers=4).train()
    latents = varied_latents()
    training_step(quantizer, latents)
    quantizer.eval()
    codes = quantizer(latents).codes
    with torch.no_grad():
        for n in range(1, 5):
            expected = sum(quantizer.levels[level]._code_vectors(codes[:, level]) for level in range(n))
            decoded = quantizer.lookup(codes[:, :n])
            assert decoded.shape == latents.shape
            torch.testing.assert_close(decoded, expected.movedim(-1, 1))
            quantizer.check_codes_shape(codes[:, :n])
    for bad in (codes[:, :0], torch.zeros(4, 5, 50, dtype=torch.long), codes[:, 0]):
        with pytest.raises(ValueError, match=r"1 <= Q <= 4"):
            quantizer.check_codes_shape(bad)


@pytest.mark.parametrize("dropout", [0.0, 0.5, 1.0])
def test_rvq_quantizer_dropout_varies_the_number_of_levels(dropout):
    quantizer = make(
        quantizer_type="rvq", codebook_size=16, num_quantizers=4, quantizer_dropout=dropout
    ).train()
    latents = varied_latents(batch=64, length=6)
    training_step(quantizer, latents)

    def levels_used(output):
        """For each example, the n whose first-n-level lookup is what the decoder sees."""
        used = []
        for example in range(latents.shape[0]):
            matches = [
                n
                for n in range(1, 5)
                if torch.allclose(
                    quantizer.lookup(output.codes[example : example + 1, :n]), output.quantized[example]
                )
            ]
            assert len(matches) == 1, matches
            used.append(matches[0])
        return torch.tensor(used)

    with torch.no_grad():
        used = levels_used(quantizer.quantize(latents))
        steps = []
        for _ in range(2):  # training steps: the levels of each are read before `update` moves the codebooks
            output = quantizer.quantize(latents)
            steps.append(levels_used(output))
            quantizer.update(latents, output)
        quantizer.eval()
        assert set(levels_used(quantizer.quantize(latents)).tolist()) == {4}  # evaluation uses every level
    if dropout == 0:
        assert set(used.tolist()) == {4}
        return
    assert set(used.tolist()) == {1, 2, 3, 4}
    full = (used == 4).float().mean().item()
    expected_full = 1 - dropout + dropout / 4
    assert abs(full - expected_full) < 0.2, (full, expected_full)
    assert not torch.equal(steps[0], steps[1])  # each step draws anew
    # The losses count the levels each example uses.
    output = quantizer.train().quantize(latents)
    assert output.commitment_loss > 0


def test_rvq_levels_learn_independently_and_draw_different_restarts():
    quantizer = make(quantizer_type="rvq", codebook_size=16, num_quantizers=3, kmeans_init=False).train()
    latents = varied_latents()
    before = state(quantizer)
    training_step(quantizer, latents)
    after = quantizer.state_dict()
    for level in range(3):
        assert not torch.equal(before[f"levels.{level}.embed"], after[f"levels.{level}.embed"])
    assert int(quantizer.step) == 1
    # Restarts of different levels pick different candidates (their seeds are offset).
    seeds = {level._generator(torch.device("cpu")).initial_seed() for level in quantizer.levels}
    assert len(seeds) == 3


# ----------------------------------------------------------------------------------------------------- Gumbel


def test_gumbel_hard_samples_are_one_hot_with_soft_gradients():
    quantizer = make(quantizer_type="gumbel", codebook_size=32, gumbel_hard=True).train()
    latents = varied_latents().requires_grad_()
    output = quantizer.quantize(latents)
    # What the decoder sees is exactly one code vector per position: the one-hot sample's.
    torch.testing.assert_close(output.quantized, quantizer.lookup(output.codes), rtol=0, atol=1e-6)
    (output.quantized * torch.randn_like(output.quantized)).sum().backward()
    assert quantizer.to_logits.weight.grad.abs().sum() > 0 and latents.grad.abs().sum() > 0
    # Soft samples are mixtures, not one code vector.
    soft = make(quantizer_type="gumbel", codebook_size=32, gumbel_hard=False).train()
    soft_output = soft.quantize(varied_latents())
    assert not torch.allclose(soft_output.quantized, soft.lookup(soft_output.codes), atol=1e-3)


def test_gumbel_temperature_follows_its_schedule():
    quantizer = make(
        quantizer_type="gumbel", gumbel_temperature=2.0, gumbel_temperature_min=0.5, gumbel_anneal_steps=8
    ).train()
    assert quantizer.temperature() == 2.0
    assert quantizer.temperature(4) == pytest.approx(1.25)  # halfway down the cosine
    assert quantizer.temperature(2) == pytest.approx(0.5 + 1.5 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert quantizer.temperature(8) == quantizer.temperature(100) == 0.5
    schedule = [quantizer.temperature(step) for step in range(10)]
    assert all(a > b for a, b in zip(schedule[:8], schedule[1:9], strict=True))
    latents = varied_latents()
    for step in range(1, 6):
        training_step(quantizer, latents)
        assert int(quantizer.step) == step and quantizer.temperature() == pytest.approx(schedule[step])
    quantizer.eval()
    with torch.no_grad():
        quantizer(latents)
    assert int(quantizer.step) == 5  # evaluation does not advance it
    constant = make(
        quantizer_type="gumbel", gumbel_temperature=2.0, gumbel_temperature_min=0.5, gumbel_anneal_steps=0
    )
    assert constant.temperature() == 0.5


def test_gumbel_eval_codes_are_the_argmax_of_the_logits():
    quantizer = make(quantizer_type="gumbel", codebook_size=64).train()
    latents = varied_latents()
    training_step(quantizer, latents)
    quantizer.eval()
    expected = quantizer.logits(latents).argmax(-1)
    with torch.no_grad():
        codes = quantizer(latents).codes
        assert torch.equal(codes, expected)
        quantizer.config.distance_chunk_size = 64 * 7  # 7 rows of logits at a time: the same codes and KL
        chunked = quantizer(latents)
        quantizer.config.distance_chunk_size = 1 << 22
    assert torch.equal(chunked.codes, expected)
    with torch.enable_grad():
        with_grad = quantizer(latents.clone().requires_grad_())
    assert torch.equal(with_grad.codes, expected)
    torch.testing.assert_close(chunked.extra_loss, with_grad.extra_loss)
    # Training samples differ from the argmax (the noise), and from step to step.
    quantizer.train()
    sampled = [training_step(quantizer, latents).codes for _ in range(2)]
    assert not torch.equal(sampled[0], expected) and not torch.equal(sampled[0], sampled[1])


def test_gumbel_kl_to_the_uniform_prior():
    quantizer = make(quantizer_type="gumbel", codebook_size=16, gumbel_kl_weight=0.5)
    with torch.no_grad():
        quantizer.to_logits.weight.zero_()
        quantizer.to_logits.bias.zero_()
        assert quantizer.eval()(varied_latents()).extra_loss.abs().item() < 1e-6  # uniform: KL 0
        quantizer.to_logits.bias[3] = 1e4  # one certain code: KL = log K
        output = quantizer(varied_latents())
    torch.testing.assert_close(output.extra_loss, torch.tensor(0.5 * math.log(16)))
    assert set(output.codes.unique().tolist()) == {3}


def _expected_diversity(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """log K minus the entropy of the code histogram: the diversity term when every position is certain."""
    probs = torch.bincount(codes.reshape(-1), minlength=codebook_size).float() / codes.numel()
    probs = probs[probs > 0]
    return math.log(codebook_size) + (probs * probs.log()).sum()


@pytest.mark.parametrize("path", ["eval-chunks", "training"])
def test_gumbel_diversity_is_the_kl_of_the_mean_code_distribution(path):
    # Certain positions split between codes 3 and 5 by the sign of the first dimension: the per-position KL
    # is log K wherever the split falls, the diversity term log K - H(histogram) (0 for a uniform batch).
    quantizer = make(
        quantizer_type="gumbel",
        codebook_size=16,
        gumbel_kl_weight=0.0,
        gumbel_diversity_weight=2.0,
        distance_chunk_size=16 * 7,  # 7 rows a chunk: the evaluation path sums over several chunks
    )
    with torch.no_grad():
        quantizer.to_logits.weight.zero_()
        quantizer.to_logits.bias.zero_()
        quantizer.to_logits.weight[3, 0] = 1e4
        quantizer.to_logits.weight[5, 0] = -1e4
    latents = varied_latents(length=45)
    mask = torch.zeros(4, 45, dtype=torch.bool)
    mask[:, :30] = True
    mask[0, :] = True
    latents[1:, 0, 30:] = latents[1:, 0, 30:].abs() + 0.1  # the padding all takes code 3
    if path == "training":
        quantizer.train()
        latents.requires_grad_()
    else:
        quantizer.eval()
    with torch.set_grad_enabled(path == "training"):
        output = quantizer(latents)
        masked = quantizer(latents, mask=mask)
    codes = output.codes.detach()
    assert set(codes.unique().tolist()) <= {3, 5}
    torch.testing.assert_close(output.extra_loss.detach(), 2.0 * _expected_diversity(codes, 16), atol=1e-4, rtol=1e-4)
    # Padding positions count in no distribution: the term is that of the real positions alone.
    real_codes = codes[mask]
    torch.testing.assert_close(masked.extra_loss.detach(), 2.0 * _expected_diversity(real_codes, 16), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(masked.extra_loss.detach(), output.extra_loss.detach())


def test_gumbel_diversity_gradient_spreads_a_collapsed_batch():
    # Every position prefers code 0: the diversity term's gradient lowers code 0's logit and raises the others'.
    quantizer = make(quantizer_type="gumbel", codebook_size=8, gumbel_kl_weight=0.0, gumbel_diversity_weight=1.0)
    with torch.no_grad():
        quantizer.to_logits.bias.zero_()
        quantizer.to_logits.bias[0] = 3.0
    quantizer.train()
    output = quantizer(varied_latents())
    output.extra_loss.backward()
    bias_grad = quantizer.to_logits.bias.grad
    assert bias_grad[0] > 0 and (bias_grad[1:] < 0).all()
    # Off (the default), the loss is the per-position KL alone.
    off = make(quantizer_type="gumbel", codebook_size=8, gumbel_kl_weight=0.0)
    assert off.config.gumbel_diversity_weight == 0.0
    assert off.train()(varied_latents()).extra_loss.item() == 0.0


# ------------------------------------------------------------------------------------- two real processes

DISTRIBUTED_CHILD = """
import sys

import torch
import torch.distributed as dist

from vq_tokenizer import VQVAEConfig
from vq_tokenizer.quantization_vqvae import build_quantizer

rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
torch.manual_seed(0)  # the same initial state everywhere
config = VQVAEConfig(modality="audio", codebook_dim=4, kmeans_iters=3, **OVERRIDES)
quantizer = build_quantizer(config).train()
optimizer = torch.optim.SGD(quantizer.parameters(), lr=0.1)
generator = torch.Generator().manual_seed(100 + rank)  # each rank its own data
for step in range(6):
    latents = torch.randn(2, 4, 40 + 8 * rank, generator=generator) * (1 + 3 * (step % 2))
    latents.requires_grad_()  # as the encoder's output
    quantizer.initialize(latents)
    output = quantizer.update(latents, quantizer.quantize(latents))
    loss = output.quantized.square().mean() + output.commitment_loss + output.codebook_loss + output.extra_loss
    optimizer.zero_grad()
    loss.backward()
    for parameter in quantizer.parameters():  # what DDP does with the gradients
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world
    optimizer.step()
torch.save({"state": quantizer.state_dict(), "perplexity": output.perplexity, "usage": output.codebook_usage}, out)
dist.destroy_process_group()
"""


@pytest.mark.parametrize(
    "overrides",
    [
        '{"quantizer_type": "rvq", "codebook_size": 16, "num_quantizers": 3, "quantizer_dropout": 0.5}',
        '{"quantizer_type": "rvq", "codebook_size": 16, "num_quantizers": 2, "codebook_update": "loss", '
        '"codebook_lookup_dim": 2}',
        '{"quantizer_type": "gumbel", "codebook_size": 16, "gumbel_anneal_steps": 4}',
        '{"quantizer_type": "fsq", "fsq_levels": [3, 3, 2]}',
    ],
    ids=["rvq-ema-dropout", "rvq-loss-lookup", "gumbel", "fsq"],
)
def test_two_processes_end_with_identical_state(tmp_path, overrides):
    """Different data on each process, batches of different sizes: the same collectives on both (no hang),
    the same state and statistics."""
    first, second = run_two_ranks(tmp_path, DISTRIBUTED_CHILD.replace("OVERRIDES", overrides))
    assert_same_state(first["state"], second["state"])
    assert torch.equal(first["perplexity"], second["perplexity"])
    assert torch.equal(first["usage"], second["usage"])
    if "step" in first["state"]:
        assert int(first["state"]["step"]) == 6


@pytest.mark.parametrize("name", list(TYPES))
def test_extreme_latents_never_give_out_of_range_codes(name):
    quantizer = make(**TYPES[name]).train()
    training_step(quantizer, varied_latents())
    latents = varied_latents()
    latents[0, :, :10] = 1e30
    latents[1, :, :10] = -1e30
    latents[2, :, :10] = float("nan")
    latents[3, :, :10] = float("inf")
    quantizer.eval()
    with torch.no_grad():
        codes = quantizer(latents).codes
    assert int(codes.min()) >= 0 and int(codes.max()) < quantizer.config.codebook_size
