"""Numerics on real Fashion-MNIST: bf16 autocast training tracks fp32, seeded runs are bitwise identical."""

from __future__ import annotations

import math

import pytest
import torch

from vq_tokenizer import VQVAEConfig, VQVAEImageProcessor, VQVAEModel
from vq_tokenizer.data import load_image_dataset

STEPS = 200
BATCH = 16
# bf16 keeps 8 bits of mantissa: after 200 steps its reconstruction loss stays within this factor of fp32's.
BF16_MARGIN = 1.25


@pytest.fixture(scope="module")
def fashion_batches():
    dataset = load_image_dataset("fashion_mnist", "train").select(range(STEPS * BATCH // 4))
    processor = VQVAEImageProcessor(num_channels=1, size_divisor=4)
    pixel_values = processor(list(dataset["image"]), return_tensors="pt").pixel_values
    order = torch.Generator().manual_seed(0)
    return [
        pixel_values[torch.randint(0, len(pixel_values), (BATCH,), generator=order)] for _ in range(STEPS)
    ]


def _config() -> VQVAEConfig:
    return VQVAEConfig(
        hidden_size=16, residual_hidden_size=8, num_residual_layers=1, codebook_size=32, codebook_dim=8
    )


def train(
    batches, autocast_dtype: torch.dtype | None = None, seed: int = 0
) -> tuple[VQVAEModel, list[float]]:
    torch.manual_seed(seed)
    model = VQVAEModel(_config())
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for batch in batches:
        with torch.autocast(
            "cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
        ):
            output = model(batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(output.reconstruction_loss.item())
    return model, losses


def test_bf16_autocast_training_stays_finite_and_close_to_fp32(fashion_batches):
    _, fp32 = train(fashion_batches)
    _, bf16 = train(fashion_batches, torch.bfloat16)
    assert all(math.isfinite(value) for value in bf16)
    tail = slice(-20, None)
    fp32_tail, bf16_tail = sum(fp32[tail]) / 20, sum(bf16[tail]) / 20
    assert fp32_tail < 0.5 * fp32[0], "fp32 training itself must learn"
    assert bf16_tail < BF16_MARGIN * fp32_tail, (bf16_tail, fp32_tail)


def test_same_seed_gives_bitwise_identical_codebooks(fashion_batches):
    first, _ = train(fashion_batches[:50], seed=3)
    second, _ = train(fashion_batches[:50], seed=3)
    other, _ = train(fashion_batches[:50], seed=4)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert not torch.equal(first.quantizer.embed, other.quantizer.embed)


@pytest.mark.parametrize("scale", [1e30, 1e38, 3e38])
def test_huge_inputs_never_give_codes_outside_the_codebook(scale):
    model = VQVAEModel(_config()).eval()
    latents = torch.randn(2, 8, 3, 5) * scale
    latents[0, :, 0, 0] = -scale
    output = model.quantizer(latents)
    assert output.codes.dtype == torch.long
    assert int(output.codes.min()) >= 0 and int(output.codes.max()) < model.config.codebook_size
