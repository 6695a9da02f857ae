"""Dataset tokenisation throughput of `vq-tokenizer encode-dataset`: 1 process and 2 processes (`accelerate
launch`), on Fashion-MNIST (70k images: train + test) and the speech corpus (every clip), in items/s and as a
share of the compute limit.

    python benchmarks/encode_dataset.py                               # both datasets, 1 and 2 processes, fp32
    python benchmarks/encode_dataset.py --datasets fashion --dtypes fp32,bf16 --rows 20000
    python benchmarks/encode_dataset.py --sizes small                 # smoke run (seconds, tiny models)

The compute limit of a case is the matmul peak of its processes over the encoder's FLOPs per item: `model.encode`
(encoder and nearest-code search) counted with `torch.utils.flop_counter.FlopCounterMode` on real items (audio:
exact at two lengths, linear in between, averaged over the clips), and the fp32 peak of as many concurrent
single-threaded processes as the case runs, each timing square GEMMs (`common.MatmulPeak`), measured right before
and right after the case (their mean is used, both are recorded). Every process runs one torch thread
(`OMP_NUM_THREADS=1`); decoding runs in the model's process (`--num_workers 0`: no spare cores on a 2-core machine).
items/s is the command's own figure: rows over the seconds from its first batch to its finished output (process
start-up and model loading excluded). The tokenizers are freshly initialised models of the recipes'
configurations (`training/configs/fashion_mnist.yaml`, `speech.yaml`), or `--image-model`/`--audio-model`.
Results are printed and appended as JSON lines to benchmarks/results/encode_dataset.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SMALL_MODEL = {"hidden_size": 16, "residual_hidden_size": 8, "num_residual_layers": 1, "codebook_size": 64}
PEAK_SCRIPT = """
import sys, torch
sys.path.insert(0, {benchmarks!r})
import common
torch.set_num_threads(1)
print(common.matmul_peak_gflops(size={size}, repeats={repeats}))
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", choices=["full", "small"], default="full", help="small: a smoke run")
    parser.add_argument("--datasets", default="fashion,speech", help="comma-separated: fashion, speech")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--dtypes", default="fp32", help="comma-separated: fp32, bf16")
    parser.add_argument("--rows", type=int, default=None, help="only the first N rows of each dataset")
    parser.add_argument(
        "--image-model", help="a trained image tokenizer folder (default: fresh recipe model)"
    )
    parser.add_argument(
        "--audio-model", help="a trained audio tokenizer folder (default: fresh recipe model)"
    )
    parser.add_argument("--image-batch-size", type=int, default=64)
    parser.add_argument("--audio-batch-size", type=int, default=4)
    parser.add_argument(
        "--workdir", help="folder for the datasets, tokenizers and outputs (default: a temp dir)"
    )
    parser.add_argument(
        "--output", default=str(common.default_output("encode_dataset")), help="JSON lines file"
    )
    args = parser.parse_args(argv)
    if args.sizes == "small":
        args.rows = args.rows or 512
    return args


# ---------------------------------------------------------------------------------------- inputs


def prepare_dataset(name: str, folder: Path, rows: int | None) -> Path:
    """Every split of the dataset in one `save_to_disk` folder (the first `rows` rows with --rows)."""
    import datasets

    from vq_tokenizer.data import load_fashion_mnist, load_speech_corpus

    splits = load_fashion_mnist() if name == "fashion" else load_speech_corpus()
    dataset = datasets.concatenate_datasets([splits["train"], splits["test"]])
    if rows:
        dataset = dataset.select(range(min(rows, len(dataset))))
    path = folder / f"{name}-{len(dataset)}"
    if not path.exists():
        dataset.save_to_disk(str(path))
    return path


def prepare_tokenizer(name: str, folder: Path, args) -> Path:
    import yaml

    from vq_tokenizer import VQVAEConfig, VQVAEModel
    from vq_tokenizer.modalities import modality_for

    given = args.image_model if name == "fashion" else args.audio_model
    if given:
        return Path(given)
    recipe = (
        common.REPO_ROOT
        / "training"
        / "configs"
        / ("fashion_mnist.yaml" if name == "fashion" else "speech.yaml")
    )
    values = yaml.safe_load(recipe.read_text())["model"]
    if args.sizes == "small":
        values.update(SMALL_MODEL)
    torch.manual_seed(0)
    config = VQVAEConfig(**values)
    path = folder / f"tokenizer-{name}"
    VQVAEModel(config).save_pretrained(path)
    modality_for(config).processor_for(config).save_pretrained(path)
    return path


def encoder_flops_per_item(tokenizer: Path, dataset: Path) -> float:
    """FLOPs of `model.encode` per item of the dataset, counted on real items (see the module docstring)."""
    import datasets
    import numpy as np
    from torch.utils.flop_counter import FlopCounterMode

    from vq_tokenizer import VQVAEModel
    from vq_tokenizer.modalities import modality_for

    model = VQVAEModel.from_pretrained(tokenizer).eval()
    modality = modality_for(model.config)
    processor = modality.processor_class.from_pretrained(tokenizer)
    rows = datasets.load_from_disk(str(dataset))
    column = modality.find_column(rows.column_names)
    rows = modality.prepare_dataset(rows, column)

    def count(inputs) -> float:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model.encode(inputs[modality.input_name])
        return float(counter.get_total_flops())

    if modality.name == "image":
        batch = rows[:64]
        return count(modality.batch(processor, batch[column], batch.get("sampling_rate"))) / len(
            batch[column]
        )
    # Audio: affine in the clip length; exact at two lengths, then averaged over the clips' real lengths.
    rate = processor.sampling_rate
    short, long = (
        count(modality.batch(processor, [np.zeros(n, np.float32)], [rate])) for n in (rate, 2 * rate)
    )
    lengths = [len(value) for value in rows[column]]
    rates = rows["sampling_rate"] if "sampling_rate" in rows.column_names else [rate] * len(lengths)
    samples = [n * rate / (r or rate) for n, r in zip(lengths, rates, strict=True)]
    slope = (long - short) / rate
    return float(np.mean([short + slope * (n - rate) for n in samples]))


# ---------------------------------------------------------------------------------------- measuring


def concurrent_peak(processes: int, size: int, repeats: int) -> float:
    """Sum of the fp32 GEMM rates (GFLOP/s) of `processes` single-threaded processes timing at once."""
    script = PEAK_SCRIPT.format(benchmarks=str(common.BENCHMARKS_DIR), size=size, repeats=repeats)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(processes)
    ]
    return sum(float(run.communicate()[0].strip().splitlines()[-1]) for run in runs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_case(
    tokenizer: Path, dataset: Path, output: Path, processes: int, dtype: str, batch_size: int
) -> dict:
    """One `encode-dataset` run; its summary (items/s among it)."""
    summary_file = output.with_suffix(".json")
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", str(_free_port())]  # fmt: skip
    command += ["-m", "vq_tokenizer", "encode-dataset", "--model", str(tokenizer), "--dataset", str(dataset),
                "-o", str(output), "--num_workers", "0", "--dtype", dtype, "--batch_size", str(batch_size),
                "--json", str(summary_file)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=common.REPO_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"encode-dataset failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(summary_file.read_text())


def codes_agreement(first: Path, second: Path) -> float:
    """Share of equal codes between two outputs of the same rows."""
    import datasets
    import numpy as np

    a = datasets.load_dataset(str(first), split="train")["codes"]
    b = datasets.load_dataset(str(second), split="train")["codes"]
    equal = total = 0
    for x, y in zip(a, b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        equal += int((x == y).sum())
        total += x.size
    return equal / total


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    env = common.environment(threads=1)
    print(common.describe_environment(env))
    records = []
    with tempfile.TemporaryDirectory(prefix="vq-encode-dataset-bench-") as scratch:
        work = Path(args.workdir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        peak_size, peak_repeats = (512, 3) if args.sizes == "small" else (2048, 5)
        for name in args.datasets.split(","):
            dataset = prepare_dataset(name, work, args.rows)
            tokenizer = prepare_tokenizer(name, work, args)
            flops = encoder_flops_per_item(tokenizer, dataset)
            batch_size = args.image_batch_size if name == "fashion" else args.audio_batch_size
            single = {}
            for dtype in args.dtypes.split(","):
                for processes in (int(p) for p in args.processes.split(",")):
                    output = work / f"out-{name}-{processes}-{dtype}"
                    load = common.load_average()
                    before = concurrent_peak(processes, peak_size, peak_repeats)
                    summary = run_case(tokenizer, dataset, output, processes, dtype, batch_size)
                    after = concurrent_peak(processes, peak_size, peak_repeats)
                    peak = (before + after) / 2
                    rate = summary["items_per_second"]
                    record = {
                        "benchmark": "encode_dataset",
                        "dataset": name,
                        "rows": summary["num_rows"],
                        "processes": processes,
                        "dtype": dtype,
                        "batch_size": batch_size,
                        "items_per_second": rate,
                        "seconds": summary["seconds"],
                        "encoder_flops_per_item": flops,
                        "peak_gflops_before": before,
                        "peak_gflops_after": after,
                        "share_of_limit": flops * rate / (peak * 1e9),
                        "tokens": summary["num_tokens"],
                        **env,
                        "load_average": load,  # at the start of this case
                    }
                    if processes == 1:
                        single[dtype] = (rate, output)
                    if dtype in single:
                        record["speedup_over_1_process"] = rate / single[dtype][0]
                    if dtype != "fp32" and "fp32" in single and processes == 1:
                        record["codes_equal_to_fp32"] = codes_agreement(single["fp32"][1], output)
                    records.append(record)
                    print(
                        f"{name} x{processes} {dtype}: {common.fmt(rate)} items/s, "
                        f"{100 * record['share_of_limit']:.0f}% of the limit (peak {common.fmt(peak)} GFLOP/s)",
                        flush=True,
                    )
    rows = [
        [r["dataset"], r["rows"], r["processes"], r["dtype"], common.fmt(r["items_per_second"]),
         common.fmt(r["encoder_flops_per_item"] / 1e6) + " M", common.fmt(r["peak_gflops_before"]) + " / "
         + common.fmt(r["peak_gflops_after"]), f"{100 * r['share_of_limit']:.0f}%",
         f"{r['speedup_over_1_process']:.2f}x" if "speedup_over_1_process" in r else "-",
         f"{100 * r['codes_equal_to_fp32']:.2f}%" if "codes_equal_to_fp32" in r else "-"]
        for r in records
    ]  # fmt: skip
    headers = ["dataset", "rows", "processes", "dtype", "items/s", "FLOP/item", "peak GFLOP/s before/after",
               "% of limit", "vs 1 process", "codes = fp32"]  # fmt: skip
    print(common.format_table(headers, rows))
    common.append_jsonl(args.output, records)
    return records


if __name__ == "__main__":
    main()
