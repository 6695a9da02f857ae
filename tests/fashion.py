"""Real Fashion-MNIST images and a tiny tokenizer trained on them, shared by the tests of tokenised data."""

from __future__ import annotations

from pathlib import Path

import datasets
import torch
from tiny import tiny_config

from vq_tokenizer import VQVAEImageProcessor, VQVAEModel
from vq_tokenizer.data import load_image_dataset


def fashion_subset_of(size: int = 256) -> datasets.Dataset:
    """The first `size` Fashion-MNIST training images, in memory (so no cache files land beside the shared copy)."""
    full = load_image_dataset("fashion_mnist", "train")
    return datasets.Dataset.from_dict(full[:size], features=full.features)


def train_tiny_tokenizer(folder: Path, images: datasets.Dataset, **overrides) -> Path:
    """A tiny VQ-VAE trained for 20 steps on `images` (k-means init, EMA), saved with its processor; `overrides`
    change the tiny config (another quantizer type)."""
    torch.manual_seed(0)
    model = VQVAEModel(tiny_config(in_channels=1, **overrides))
    processor = VQVAEImageProcessor(num_channels=1, size_divisor=model.config.downsampling_factor)
    pixels = processor(images[:]["image"], return_tensors="pt").pixel_values
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for step in range(20):
        batch = pixels[(step * 64) % len(pixels) :][:64]
        model(pixel_values=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
