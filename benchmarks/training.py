"""A better tokenizer at equal time: the paper's Fashion-MNIST VQ-VAE with our quantizer and with
vector-quantize-pytorch's EMA quantizer, each trained for the same wall-clock budget.

    python benchmarks/training.py                                 # 120 s per variant, all variants
    python benchmarks/training.py --seconds 60 --variants ours,vqp
    python benchmarks/training.py --sizes small                   # smoke run (seconds, tiny model)

Everything but the quantizer module is the same: the encoder and decoder (ours, from the recipe
training/configs/fashion_mnist.yaml: K=512, D=64, hidden 128), their initial weights (same seed), Adam with the
recipe's learning rate, warm-up and cosine decay (the scripts' `vq_tokenizer.training.TrainingSchedule`, over
the time budget), batch 64, and the same order of the same Fashion-MNIST training images. The peer is wrapped to our
`VQVAEQuantizerOutput` interface and swapped in for `model.quantizer`. Per variant: steps/s, images/s, and on
the first `--eval-images` test images: PSNR and SSIM (28x28, [0, 1]), codebook usage and perplexity.

Variants: `ours` (the recipe: EMA, k-means init, dead-code restarts), `ours-plain` (EMA only), `vqp`
(vector-quantize-pytorch `VectorQuantize`, EMA decay 0.99, the recipe's low-dimensional lookup as its
`codebook_dim`, its defaults otherwise) and `vqp-kmeans-dead` (plus
its k-means init and dead-code expiry, threshold 1). Results are printed and appended as JSON lines to
benchmarks/results/training.jsonl.

The quantizer types (issue 13), at 9 bits per code position (441 bits an image) unless named otherwise:
`gumbel` (K=512), `fsq` (levels [8, 8, 8]), `rvq-3x8` (3 levels of K=8), `rvq-2x512` (2 levels of K=512, 18 bits:
against `ours`, the one that spends twice the bits), and the peers in the same encoder/decoder:
`vqp-fsq` (vector-quantize-pytorch `FSQ`, levels [8, 8, 8]) and `vqp-rvq-3x8` (`ResidualVQ`, 3 levels of K=8,
the recipe's lookup dimension, k-means init and dead-code expiry as ours). `--picture PNG` draws the same test
images reconstructed by each variant, one row per variant.

    python benchmarks/training.py --seconds 70 --variants ours,gumbel,fsq,rvq-3x8,rvq-2x512,vqp-fsq,vqp-rvq-3x8 \
        --picture benchmarks/results/quantizer_types.png
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from vq_tokenizer.quantization_vqvae import VQVAEQuantizerBase  # noqa: E402

RECIPE = common.REPO_ROOT / "training" / "configs" / "fashion_mnist.yaml"
VARIANTS = {
    "ours": "vq_tokenizer VQVAEVectorQuantizer (EMA, k-means init, dead-code restarts)",
    "ours-plain": "vq_tokenizer VQVAEVectorQuantizer (EMA only)",
    "vqp": "vector-quantize-pytorch VectorQuantize (EMA)",
    "vqp-kmeans-dead": "vector-quantize-pytorch VectorQuantize (EMA, k-means init, dead-code expiry)",
    "gumbel": "vq_tokenizer gumbel, K=512 (hard, KL to uniform)",
    "fsq": "vq_tokenizer fsq, levels [8, 8, 8]",
    "rvq-3x8": "vq_tokenizer rvq, 3 levels of K=8",
    "rvq-2x512": "vq_tokenizer rvq, 2 levels of K=512 (18 bits a position)",
    "vqp-fsq": "vector-quantize-pytorch FSQ, levels [8, 8, 8]",
    "vqp-rvq-3x8": "vector-quantize-pytorch ResidualVQ, 3 levels of K=8 (k-means, dead-code expiry)",
    "rvq-3x8-d64": "vq_tokenizer rvq, 3 levels of K=8, 64-d codes (no lookup projection)",
    "vqp-rvq-3x8-d64": "vector-quantize-pytorch ResidualVQ, 3 levels of K=8, 64-d codes (k-means, dead-code expiry)",
}
# The config each variant builds (the recipe's, with these changes); the peers swap their module in.
TYPE_SETTINGS = {
    "gumbel": {"quantizer_type": "gumbel"},
    "fsq": {"quantizer_type": "fsq", "fsq_levels": [8, 8, 8], "codebook_size": None},
    "rvq-3x8": {"quantizer_type": "rvq", "num_quantizers": 3, "codebook_size": 8},
    "rvq-2x512": {"quantizer_type": "rvq", "num_quantizers": 2},
    "vqp-fsq": {"quantizer_type": "fsq", "fsq_levels": [8, 8, 8], "codebook_size": None},
    "vqp-rvq-3x8": {"quantizer_type": "rvq", "num_quantizers": 3, "codebook_size": 8},
    # The recipe's 16-d lookup differs between the two: ours projects each level's residual, the peer projects
    # once and takes residuals in 16-d. Without it both quantize the 64-d latents directly.
    "rvq-3x8-d64": {"quantizer_type": "rvq", "num_quantizers": 3, "codebook_size": 8, "codebook_lookup_dim": None},
    "vqp-rvq-3x8-d64": {"quantizer_type": "rvq", "num_quantizers": 3, "codebook_size": 8, "codebook_lookup_dim": None},
}
SMALL_MODEL = {"hidden_size": 16, "residual_hidden_size": 8, "num_residual_layers": 1, "codebook_size": 64}


def _statistics(codes: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.bincount(codes.reshape(-1), minlength=num_codes).float()
    probs = counts / counts.sum().clamp(min=1)
    return torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum()), (counts > 0).float().mean()


def _no_mask(mask: torch.Tensor | None) -> None:
    """The peers have no padding mask; the Fashion-MNIST images never need one."""
    if mask is not None:
        raise ValueError("vector-quantize-pytorch's quantizers take no padding mask: pass whole images.")


def _peer_output(quantized, codes, commitment_loss, num_codes: int, level_offsets=None):
    from vq_tokenizer import VQVAEQuantizerOutput

    ids = codes if level_offsets is None else codes + level_offsets
    perplexity, usage = _statistics(ids, num_codes)
    zero = quantized.new_zeros(())
    return VQVAEQuantizerOutput(
        quantized=quantized,
        codes=codes,
        commitment_loss=commitment_loss.reshape(()),
        codebook_loss=zero,
        perplexity=perplexity,
        codebook_usage=usage,
        extra_loss=zero,
    )


class VectorQuantizePytorchQuantizer(VQVAEQuantizerBase):
    """vector-quantize-pytorch's `VectorQuantize` behind our quantizer interface (`quantize` and `lookup`; the
    learning path is the base's no-ops: the peer learns inside its own forward)."""

    def __init__(self, config, kmeans_and_dead_codes: bool):
        super().__init__(config)
        from vector_quantize_pytorch import VectorQuantize

        self.codebook_size = config.codebook_size
        self.quantizer = VectorQuantize(
            dim=config.codebook_dim,
            codebook_size=config.codebook_size,
            # Its own factorised lookup (a linear projection in and out), as the recipe's codebook_lookup_dim.
            codebook_dim=config.codebook_lookup_dim,
            decay=config.ema_decay,
            eps=config.ema_epsilon,
            commitment_weight=1.0,  # our model multiplies by config.commitment_cost
            kmeans_init=kmeans_and_dead_codes,
            kmeans_iters=config.kmeans_iters,
            threshold_ema_dead_code=config.dead_code_threshold if kmeans_and_dead_codes else 0,
            accept_image_fmap=config.modality == "image",
            channel_last=False,
        )

    def quantize(self, latents: torch.Tensor, mask: torch.Tensor | None = None):
        _no_mask(mask)
        quantized, codes, commitment_loss = self.quantizer(latents)
        return _peer_output(quantized, codes, commitment_loss, self.codebook_size)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.quantizer.get_output_from_indices(codes)


class VectorQuantizePytorchFSQ(VQVAEQuantizerBase):
    """vector-quantize-pytorch's `FSQ` (its projections D -> len(levels) -> D) behind our interface."""

    def __init__(self, config):
        super().__init__(config)
        from vector_quantize_pytorch import FSQ

        self.codebook_size = config.codebook_size
        self.quantizer = FSQ(levels=list(config.fsq_levels), dim=config.codebook_dim)

    def quantize(self, latents: torch.Tensor, mask: torch.Tensor | None = None):
        _no_mask(mask)
        quantized, codes = self.quantizer(latents)  # image feature maps: channels first in and out
        return _peer_output(quantized, codes.long(), quantized.new_zeros(()), self.codebook_size)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.quantizer.indices_to_codes(codes)


class VectorQuantizePytorchResidualVQ(VQVAEQuantizerBase):
    """vector-quantize-pytorch's `ResidualVQ` behind our interface, with our code layout `[B, Q, h, w]`."""

    def __init__(self, config):
        super().__init__(config)
        from vector_quantize_pytorch import ResidualVQ

        self.codebook_size = config.codebook_size
        self.num_quantizers = config.num_quantizers
        self.quantizer = ResidualVQ(
            dim=config.codebook_dim,
            num_quantizers=config.num_quantizers,
            codebook_size=config.codebook_size,
            codebook_dim=config.codebook_lookup_dim,
            decay=config.ema_decay,
            eps=config.ema_epsilon,
            commitment_weight=1.0,
            kmeans_init=config.kmeans_init,
            kmeans_iters=config.kmeans_iters,
            threshold_ema_dead_code=config.dead_code_threshold,
        )

    def quantize(self, latents: torch.Tensor, mask: torch.Tensor | None = None):
        _no_mask(mask)
        batch, dim, height, width = latents.shape
        quantized, codes, losses = self.quantizer(latents.flatten(2).transpose(1, 2))  # [B, hw, D]
        quantized = quantized.transpose(1, 2).reshape(batch, dim, height, width)
        codes = codes.transpose(1, 2).reshape(batch, self.num_quantizers, height, width).long()
        offsets = torch.arange(self.num_quantizers).reshape(1, -1, 1, 1) * self.codebook_size
        return _peer_output(
            quantized, codes, losses.sum(), self.num_quantizers * self.codebook_size, level_offsets=offsets
        )

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        batch, levels, height, width = codes.shape
        vectors = self.quantizer.get_output_from_indices(codes.flatten(2).transpose(1, 2))  # [B, hw, D]
        return vectors.transpose(1, 2).reshape(batch, -1, height, width)


def recipe() -> tuple[dict, dict]:
    settings = yaml.safe_load(RECIPE.read_text())
    return settings, settings.pop("model")


def gumbel_options(args: argparse.Namespace) -> dict:
    """The gumbel variant's options from the command line (None: the config's default)."""
    return {
        "gumbel_anneal_steps": args.gumbel_anneal_steps,
        "gumbel_kl_weight": args.gumbel_kl_weight,
        "gumbel_diversity_weight": args.gumbel_diversity_weight,
    }


def build_model(variant: str, model_settings: dict, seed: int, gumbel_options: dict | None = None):
    from vq_tokenizer import VQVAEConfig, VQVAEModel

    settings = dict(model_settings)
    if variant == "ours-plain":
        settings.update(kmeans_init=False, dead_code_threshold=0.0)
    settings.update(TYPE_SETTINGS.get(variant, {}))
    if variant == "gumbel":
        settings.update({name: value for name, value in (gumbel_options or {}).items() if value is not None})
    config = VQVAEConfig(**settings)
    torch.manual_seed(seed)  # same encoder and decoder weights for every variant
    model = VQVAEModel(config)
    if variant.startswith("vqp"):
        torch.manual_seed(seed + 1)
        if variant == "vqp-fsq":
            model.quantizer = VectorQuantizePytorchFSQ(config)
        elif variant.startswith("vqp-rvq"):
            model.quantizer = VectorQuantizePytorchResidualVQ(config)
        else:
            model.quantizer = VectorQuantizePytorchQuantizer(config, kmeans_and_dead_codes=variant != "vqp")
    return model


def load_images(split: str, limit: int | None, processor) -> torch.Tensor:
    """Fashion-MNIST `split` through the recipe's processor -> pixel_values `[N, 1, 28, 28]` in [-1, 1]."""
    from vq_tokenizer.data import load_image_dataset

    column = load_image_dataset("fashion_mnist", split).with_format("numpy")["image"]
    count = len(column) if limit is None else min(limit, len(column))
    batches = []
    for start in range(0, count, 5000):
        images = np.asarray(column[start : min(count, start + 5000)])
        batches.append(processor(list(images), return_tensors="pt").pixel_values)
    return torch.cat(batches)


@torch.no_grad()
def evaluate(
    model,
    processor,
    images: torch.Tensor,
    batch_size: int = 500,
    keep: list | None = None,
    keep_images: int = 10,
) -> dict:
    from vq_tokenizer.metrics import CodebookStats, psnr_per_image, ssim_per_image

    model.eval()
    config = model.config
    levels = config.codes_per_position  # rvq: the codes of level l count as ids l * K + code
    stats = CodebookStats(levels * config.codebook_size)
    psnr, ssim = [], []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        output = model(pixel_values=batch)
        originals = processor.postprocess(batch, output_type="pt")
        reconstructions = processor.postprocess(output.reconstruction, output_type="pt")
        psnr.append(psnr_per_image(reconstructions, originals))
        ssim.append(ssim_per_image(reconstructions, originals))
        codes = output.codes
        if levels > 1:
            codes = codes + torch.arange(levels).reshape(1, -1, 1, 1) * config.codebook_size
        stats.update(codes)
        if keep is not None and start == 0:
            keep.append(reconstructions[:keep_images].clamp(0, 1))
    model.train()
    return {
        "test_psnr": float(torch.cat(psnr).mean()),
        "test_ssim": float(torch.cat(ssim).mean()),
        "codebook_usage": stats.usage,
        "perplexity": stats.perplexity,
        "bits_per_image": config.bits_per_position
        * images.shape[-2]
        * images.shape[-1]
        / config.downsampling_factor**2,
    }


def train_variant(
    variant: str, args, train_images, test_images, processor, settings, model_settings, keep=None
) -> dict:
    from vq_tokenizer.training import TrainingSchedule

    model = build_model(variant, model_settings, args.seed, gumbel_options(args))
    model.train()
    learning_rate = settings["learning_rate"]
    # The recipe's schedule, with the cosine over the time budget (the step count is what we measure).
    schedule = TrainingSchedule(
        learning_rate,
        max_steps=args.max_steps,
        max_seconds=args.seconds,
        warmup_steps=settings.get("warmup_steps", 0),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    batch_size = settings["per_device_batch_size"]
    order_generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(train_images.shape[0], generator=order_generator)
    position = step = 0
    last_loss = float("nan")
    started = time.perf_counter()
    elapsed = 0.0
    while not schedule.finished(step, elapsed):
        if position + batch_size > order.shape[0]:
            order = torch.randperm(train_images.shape[0], generator=order_generator)
            position = 0
        batch = train_images[order[position : position + batch_size]]
        position += batch_size
        schedule.apply(optimizer, step, elapsed)
        output = model(pixel_values=batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % 50 == 0 or step == 1:
            last_loss = output.loss.item()
            if not math.isfinite(last_loss):
                break
        elapsed = time.perf_counter() - started
    train_seconds = time.perf_counter() - started
    record = {
        "steps": step,
        "train_seconds": round(train_seconds, 2),
        "steps_per_s": step / train_seconds,
        "images_per_s": step * batch_size / train_seconds,
        "last_train_loss": last_loss,
    }
    record.update(evaluate(model, processor, test_images, keep=keep))
    return record


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", choices=["full", "small"], default="full", help="small: a smoke run")
    parser.add_argument("--seconds", type=float, help="wall-clock training budget per variant (default 120)")
    parser.add_argument("--max-steps", type=int, default=None, help="also stop after this many steps")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}"
    )
    parser.add_argument("--eval-images", type=int, help="test images for PSNR/usage (default 2000)")
    parser.add_argument("--train-images", type=int, help="training images used (default all 60000)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--gumbel-anneal-steps",
        type=int,
        default=None,
        help="gumbel: temperature annealing steps (default: config's)",
    )
    parser.add_argument("--gumbel-kl-weight", type=float, default=None, help="gumbel: KL weight (default: config's)")
    parser.add_argument(
        "--gumbel-diversity-weight", type=float, default=None, help="gumbel: diversity weight (default: config's)"
    )
    parser.add_argument(
        "--picture", default=None, help="PNG of the same test images reconstructed by each variant"
    )
    parser.add_argument("--output", default=str(common.default_output("training")), help="JSON lines file")
    args = parser.parse_args(argv)
    small = args.sizes == "small"
    args.seconds = args.seconds or (3.0 if small else 120.0)
    args.eval_images = args.eval_images or (256 if small else 2000)
    args.train_images = args.train_images or (1024 if small else None)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    return args


HEADERS = [
    "quantizer",
    "status",
    "steps",
    "steps/s",
    "images/s",
    "test PSNR dB",
    "test SSIM",
    "bits/image",
    "codebook usage",
    "perplexity",
]


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from vq_tokenizer import VQVAEImageProcessor

    settings, model_settings = recipe()
    if args.sizes == "small":
        model_settings.update(SMALL_MODEL)
    env = common.environment(args.threads)
    print(
        f"# Training at equal time: {args.seconds:g} s per variant, Fashion-MNIST, model {model_settings}, "
        f"batch {settings['per_device_batch_size']}, Adam lr {settings['learning_rate']}"
    )
    print(f"# {common.describe_environment(env)}", flush=True)
    vqp_available = common.module_available("vector_quantize_pytorch")
    if not vqp_available and any(v.startswith("vqp") for v in args.variants):
        print(
            "# vector-quantize-pytorch is not installed: its variants are reported as missing (pip install -e '.[bench]')"
        )
    processor = VQVAEImageProcessor(num_channels=model_settings.get("in_channels", 1), size_divisor=4)
    train_images = load_images("train", args.train_images, processor)
    test_images = load_images("test", args.eval_images, processor)
    print(f"# {train_images.shape[0]} training images, {test_images.shape[0]} test images", flush=True)
    records = []
    pictures = [("originals", processor.postprocess(test_images[:10], output_type="pt").clamp(0, 1))]
    for variant in args.variants:
        record = {
            "benchmark": "training",
            "variant": variant,
            "label": VARIANTS[variant],
            "budget_s": args.seconds,
            "model": model_settings,
            "variant_settings": TYPE_SETTINGS.get(variant, {}),
            "batch_size": settings["per_device_batch_size"],
            "learning_rate": settings["learning_rate"],
            "eval_images": test_images.shape[0],
            "train_images": train_images.shape[0],
            "status": "ok",
        }
        if variant == "gumbel":
            record["gumbel_options"] = gumbel_options(args)  # None: the config's default
        keep = []
        if variant.startswith("vqp") and not vqp_available:
            record.update(status="missing", error="vector_quantize_pytorch is not installed")
        else:
            record["load_average_start"] = common.load_average()
            try:
                record.update(
                    train_variant(
                        variant, args, train_images, test_images, processor, settings, model_settings, keep
                    )
                )
                pictures.append((variant, keep[0]))
            except ImportError as error:  # the peer is not (properly) installed
                record.update(status="missing", error=f"{type(error).__name__}: {error}"[:500])
            except Exception as error:  # noqa: BLE001 - reported as this variant's status
                record.update(status="error", error=f"{type(error).__name__}: {error}"[:500])
            record["load_average_end"] = common.load_average()
        record.update(env)
        common.append_jsonl(args.output, [record])
        records.append(record)
        print(
            f"# {variant}: {record['status']}" + (f" ({record['error']})" if "error" in record else ""),
            flush=True,
        )
    rows = []
    for r in records:
        ok = r["status"] == "ok"
        rows.append(
            [
                r["label"],
                r["status"],
                r.get("steps", "-"),
                common.fmt(r["steps_per_s"]) if ok else "-",
                common.fmt(r["images_per_s"]) if ok else "-",
                f"{r['test_psnr']:.2f}" if ok else "-",
                f"{r['test_ssim']:.3f}" if ok else "-",
                f"{r['bits_per_image']:g}" if ok else "-",
                f"{r['codebook_usage']:.1%}" if ok else "-",
                f"{r['perplexity']:.1f}" if ok else "-",
            ]
        )
    print()
    print(common.format_table(HEADERS, rows))
    print(f"\n# load average at the end: {common.load_average()}; results appended to {args.output}")
    if args.picture:
        save_rows(pictures, args.picture)
        print(f"# reconstructions: {args.picture}")
    return records


def save_rows(rows: list[tuple[str, torch.Tensor]], path: str) -> None:
    """One labelled row of images `[n, C, H, W]` in [0, 1] per entry, scaled up 3x."""
    from PIL import Image, ImageDraw

    scale, label_width = 3, 230
    count, _, height, width = rows[0][1].shape
    canvas = Image.new("RGB", (label_width + count * width * scale, len(rows) * height * scale), "white")
    draw = ImageDraw.Draw(canvas)
    for row, (name, images) in enumerate(rows):
        for col, image in enumerate(images[:count]):
            array = (image[0] * 255).round().to(torch.uint8).numpy()
            tile = (
                Image.fromarray(array).convert("RGB").resize((width * scale, height * scale), Image.NEAREST)
            )
            canvas.paste(tile, (label_width + col * width * scale, row * height * scale))
        draw.text((4, row * height * scale + height * scale // 2 - 6), name, fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


if __name__ == "__main__":
    main()
