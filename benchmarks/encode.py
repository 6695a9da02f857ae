"""End-to-end tokenisation throughput through the public `encode`: images/s and audio seconds/s, in fp32
and under bf16 autocast, for batch sizes 1 to 256.

    python benchmarks/encode.py                              # fresh default-config image and audio models
    python benchmarks/encode.py --model out/fmnist           # a trained model folder (its modality)
    python benchmarks/encode.py --sizes small                # smoke run (seconds, tiny model)

The model is `VQVAEModel.from_pretrained(--model)` or, without `--model`, a freshly initialised
`VQVAEConfig(modality=...)` model with the default settings (the output says which). Inputs are uniform noise
in [-1, 1] of the model's channels: images `--image-size` square (default 28), audio clips of
`--audio-seconds` at the model's sampling rate. Per batch size and precision: the median of `--repeats` timed
`model.encode(...)` calls after a warm-up (fewer when a call is slow: `--budget` seconds per setting), the
throughput, and for bf16 the share of codes equal to the fp32 codes of the same inputs. Results are printed
and appended as JSON lines to benchmarks/results/encode.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SMALL_MODEL = {"hidden_size": 16, "residual_hidden_size": 8, "num_residual_layers": 1, "codebook_size": 64}


def load_models(args) -> list[tuple[str, object]]:
    """(description, model) pairs, in eval mode."""
    from vq_tokenizer import VQVAEConfig, VQVAEModel

    if args.model:
        model = VQVAEModel.from_pretrained(args.model).eval()
        return [(f"trained model {args.model}", model)]
    modalities = ["image", "audio"] if args.modality == "both" else [args.modality]
    models = []
    for modality in modalities:
        overrides = SMALL_MODEL if args.sizes == "small" else {}
        torch.manual_seed(args.seed)
        config = VQVAEConfig(modality=modality, **overrides)
        description = f"freshly initialised VQVAEConfig(modality={modality!r}{', tiny' if overrides else ''})"
        models.append((description, VQVAEModel(config).eval()))
    return models


def make_inputs(config, batch_size: int, args, generator: torch.Generator) -> tuple[torch.Tensor, float, str]:
    """Noise in [-1, 1] of the model's channels, how much data it stands for, and the throughput unit.

    Images: `--image-size` squares, counted as images; audio: clips of `--audio-seconds` at the model's rate,
    counted in seconds. Each axis is rounded up to a multiple of the model's downsampling factor (hop length).
    """
    images = config.spatial_dims == 2
    length = args.image_size if images else int(args.audio_seconds * config.sampling_rate)
    length = -(-length // config.downsampling_factor) * config.downsampling_factor
    noise = torch.rand((batch_size, config.in_channels, *[length] * config.spatial_dims), generator=generator)
    if images:
        return noise * 2 - 1, float(batch_size), "images/s"
    return noise * 2 - 1, batch_size * length / config.sampling_rate, "audio s/s"


def autocast_context(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", choices=["full", "small"], default="full", help="small: a smoke run")
    parser.add_argument("--model", help="a trained model folder (default: a freshly initialised model)")
    parser.add_argument(
        "--modality", choices=["image", "audio", "both"], default="both", help="fresh models only"
    )
    parser.add_argument("--batch-sizes", help="comma-separated (default 1,2,4,...,256; small: 1,4)")
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--audio-seconds", type=float, help="seconds per clip (default 1.0; small: 0.1)")
    parser.add_argument("--repeats", type=int, help="timed calls per setting after a warm-up (default 5)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per setting before fewer repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(common.default_output("encode")), help="JSON lines file")
    args = parser.parse_args(argv)
    small = args.sizes == "small"
    args.batch_sizes = [
        int(b) for b in (args.batch_sizes or ("1,4" if small else "1,2,4,8,16,32,64,128,256")).split(",")
    ]
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if set(args.precisions) - {"fp32", "bf16"}:
        parser.error("--precisions takes fp32 and/or bf16")
    args.audio_seconds = args.audio_seconds or (0.1 if small else 1.0)
    args.repeats = args.repeats or (2 if small else 5)
    return args


HEADERS = ["modality", "batch", "precision", "median ms", "throughput", "codes = fp32"]


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = common.environment(args.threads)
    print("# Tokenisation throughput through model.encode")
    print(f"# {common.describe_environment(env)}", flush=True)
    records = []
    for description, model in load_models(args):
        config = model.config
        print(f"# model: {description}; {model.num_parameters():,} parameters, K={config.codebook_size}")
        rows = []
        for batch_size in args.batch_sizes:
            generator = torch.Generator().manual_seed(args.seed + batch_size)
            inputs, amount, unit = make_inputs(config, batch_size, args, generator)
            reference_codes = None
            for precision in args.precisions:

                def call(model=model, inputs=inputs, precision=precision):
                    with torch.no_grad(), autocast_context(precision):
                        return model.encode(inputs).codes

                times, codes = common.time_calls(call, args.repeats, warmup=1, budget_s=args.budget)
                seconds = common.median(times)
                if precision == "fp32":
                    reference_codes = codes
                agreement = None
                if precision != "fp32":
                    if reference_codes is None:
                        with torch.no_grad():
                            reference_codes = model.encode(inputs).codes
                    agreement = float((codes == reference_codes).double().mean())
                record = {
                    "benchmark": "encode",
                    "model": description,
                    "modality": config.modality,
                    "input_shape": list(inputs.shape),
                    "batch_size": batch_size,
                    "precision": precision,
                    "times_s": [round(t, 6) for t in times],
                    "median_s": seconds,
                    "throughput": amount / seconds,
                    "throughput_unit": unit,
                    "codes_equal_to_fp32": agreement,
                    **env,
                }
                records.append(record)
                rows.append(
                    [
                        config.modality,
                        batch_size,
                        precision,
                        common.fmt(seconds * 1e3),
                        f"{common.fmt(amount / seconds)} {unit}",
                        "-" if agreement is None else f"{agreement:.1%}",
                    ]
                )
                print(
                    f"  {config.modality} batch {batch_size} {precision}: {common.fmt(amount / seconds)} {unit}",
                    flush=True,
                )
        common.append_jsonl(args.output, [r for r in records if r["model"] == description])
        print()
        print(common.format_table(HEADERS, rows))
        print()
    print(f"# load average at the end: {common.load_average()}; results appended to {args.output}")
    return records


if __name__ == "__main__":
    main()
