"""The quantizers respect the padding mask: padding positions get codes but count in no loss and in no
statistic, learnt (EMA, k-means, restarts) or reported (usage, perplexity)."""

from __future__ import annotations

import pytest
import torch

from vq_tokenizer import VQVAEConfig, VQVAEModel, build_quantizer

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = dict(modality="audio", codebook_size=16, codebook_dim=4, kmeans_iters=3, hop_length=4)
TYPES = {
    "vq": {},
    "rvq": {"quantizer_type": "rvq", "num_quantizers": 3},
    "gumbel": {"quantizer_type": "gumbel"},
    "fsq": {"quantizer_type": "fsq", "fsq_levels": [4, 4], "codebook_size": None},
}


def _pair(kind: str, **overrides):
    """Two identical quantizers in training mode."""
    options = {**BASE, **TYPES[kind], **overrides}
    options = {key: value for key, value in options.items() if value is not None}
    config = VQVAEConfig(**options)
    torch.manual_seed(0)
    first = build_quantizer(config).train()
    second = build_quantizer(config).train()
    second.load_state_dict(first.state_dict())
    return first, second


def _step(quantizer, latents, mask=None):
    quantizer.initialize(latents, mask)
    output = quantizer(latents, mask=mask)
    return quantizer.update(latents, output, mask)


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_padding_changes_no_state_loss_or_statistic(kind):
    """A batch of real frames, and the same frames followed by junk frames marked as padding: the same losses,
    the same statistics and (for the learning types) the same state after the step."""
    torch.manual_seed(1)
    real = torch.randn(2, 4, 12)
    junk = 50 * torch.randn(2, 4, 5)
    padded = torch.cat([real, junk], dim=-1)
    mask = torch.zeros(2, 17, dtype=torch.bool)
    mask[:, :12] = True
    # Restarts draw their candidates at random: with padding they draw from the real rows only, but not the
    # same rows as without it; the EMA, k-means and statistics must agree exactly.
    first, second = _pair(kind, **({} if kind in ("gumbel", "fsq") else {"dead_code_threshold": 0.0}))
    if kind == "gumbel":  # sampling noise depends on the number of rows: compare evaluation-mode outputs
        first.eval()
        second.eval()
    alone = _step(first, real)
    with_padding = _step(second, padded, mask)
    for name in ("commitment_loss", "codebook_loss", "extra_loss", "perplexity", "codebook_usage"):
        torch.testing.assert_close(getattr(alone, name), getattr(with_padding, name), msg=name)
    assert torch.equal(alone.codes, with_padding.codes[..., :12])
    for (name, tensor), other in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(tensor, other, msg=name)


@pytest.mark.parametrize("kind", ["vq", "rvq"])
def test_restarts_draw_only_real_positions(kind):
    """Dead codes restart from real encoder outputs, never from padding (junk far from every real one)."""
    torch.manual_seed(2)
    real = torch.randn(1, 4, 6)
    junk = 1000 + torch.randn(1, 4, 30)
    mask = torch.zeros(1, 36, dtype=torch.bool)
    mask[:, :6] = True
    quantizer, _ = _pair(kind, dead_code_threshold=100.0, kmeans_init=False)  # every code is dead
    _step(quantizer, torch.cat([real, junk], dim=-1), mask)
    levels = quantizer.levels if kind == "rvq" else [quantizer]
    assert levels[0].embed.abs().max() < 100


def test_model_forward_counts_only_frames_with_real_samples():
    """The model turns `padding_mask` into a frame mask (a frame is real if it holds a real sample): the
    codebook's usage statistics count 16 + 3 frames of a batch of 2 x 16, not 32."""
    config = VQVAEConfig(**{**BASE, "hidden_size": 8, "residual_hidden_size": 4, "kmeans_init": False})
    config.dead_code_threshold = 0.0
    torch.manual_seed(3)
    model = VQVAEModel(config).train()
    inputs = torch.randn(2, 1, 64) * 0.3
    mask = torch.ones(2, 64)
    mask[1, 10:] = 0  # 10 real samples: frames 0, 1 and 2 (hop 4)
    model(input_values=inputs, padding_mask=mask)
    counted = model.quantizer.code_usage.sum() / (1 - 0.9)  # one step of the usage EMA (decay 0.9)
    assert round(float(counted)) == 19
    fresh = VQVAEModel(config).train()
    fresh(input_values=inputs)
    assert round(float(fresh.quantizer.code_usage.sum() / (1 - 0.9))) == 32
