"""The tiny model configuration the tests share: seconds to build and run, same code paths as the real one."""

from __future__ import annotations

from vq_tokenizer import VQVAEConfig

TINY = dict(
    hidden_size=16,
    residual_hidden_size=8,
    num_residual_layers=1,
    codebook_size=32,
    codebook_dim=8,
    kmeans_iters=3,
)


def tiny_config(**overrides) -> VQVAEConfig:
    return VQVAEConfig(**{**TINY, **overrides})
