"""The nearest-code step alone: our quantizer against the peers, on the same input and the same codebook.

    python benchmarks/quantizer.py                          # N = 65536 vectors (B=64, 32x32), D = 64, K = 512, 8192, 65536
    python benchmarks/quantizer.py --ks 8192 --repeats 3    # one codebook size
    python benchmarks/quantizer.py --sizes small            # smoke run (seconds)

Every implementation gets the same float32 latents `[B, D, 32, 32]` and the same codebook (copied into its
module) and runs in eval mode without gradients: ours (`VQVAEVectorQuantizer`, called plainly, with torch's
threads), ours row-parallel (the same inside `parallel_nearest_codes(--search-workers)` with torch's threads
set to 1, as a script opts in; only with more than one thread), vector-quantize-pytorch
`VectorQuantize`, diffusers `VectorQuantizer`, transformers `ChameleonVQVAEVectorQuantizer`, and plain
`torch.cdist` + `argmin`. Each case runs in a fresh Python process (so its resident-memory high-water mark is
its own) with a time limit and a cap on extra memory; a case that runs out of either is reported, not
dropped. Per case: median seconds of `--repeats` calls after a warm-up, vectors/s, the distance GEMM's rate
(2*N*K*D / time) as a share of this machine's fp32 matmul peak, timed in the same process between the calls,
the peak extra resident memory, and the share of codes that differ from the float64 nearest code by more
than an fp32 tie. Peers that are not installed (`pip install -e ".[bench]"`) are reported as missing.
Results are printed as a table and appended as JSON lines to benchmarks/results/quantizer.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SPATIAL = 32  # latents are [B, D, 32, 32]: N = B * 1024
TIE_RTOL = 1e-5  # codes whose float64 distance is within 1e-5 * (|z|^2 + |e|^2) of the minimum count as ties

# name -> (label, module that must be importable)
IMPLEMENTATIONS = {
    "ours": ("vq_tokenizer VQVAEVectorQuantizer", "vq_tokenizer"),
    "ours-rows": ("vq_tokenizer VQVAEVectorQuantizer, parallel_nearest_codes", "vq_tokenizer"),
    "vector-quantize-pytorch": ("vector-quantize-pytorch VectorQuantize", "vector_quantize_pytorch"),
    "diffusers": ("diffusers VectorQuantizer", "diffusers"),
    "chameleon": ("transformers ChameleonVQVAEVectorQuantizer", "transformers"),
    "cdist": ("torch.cdist + argmin", "torch"),
}
OURS = ("ours", "ours-rows")
# What a case holds open while it runs (the row-parallel block); closed at the end of the case.
CASE_RESOURCES = contextlib.ExitStack()


# ------------------------------------------------------------------------------------------ implementations
# Each builder takes the codebook [K, D] and returns a function latents [B, D, H, W] -> codes [B*H*W] in
# (b, h, w) order.


def build_ours(codebook: torch.Tensor):
    from vq_tokenizer import VQVAEConfig, VQVAEVectorQuantizer

    num_codes, dim = codebook.shape
    quantizer = VQVAEVectorQuantizer(
        VQVAEConfig(codebook_size=num_codes, codebook_dim=dim, kmeans_init=False)
    )
    quantizer.eval()
    quantizer.embed.data.copy_(codebook)
    return lambda latents: quantizer(latents).codes.reshape(-1)


def build_ours_rows(codebook: torch.Tensor, workers: int):
    """Ours as a script opts in to the row-parallel search: torch's threads set to 1 for the process (the
    worker threads start with it), one `parallel_nearest_codes` block around every call."""
    from vq_tokenizer.quantization_vqvae import parallel_nearest_codes

    torch.set_num_threads(1)
    CASE_RESOURCES.enter_context(parallel_nearest_codes(workers))
    return build_ours(codebook)


def build_vector_quantize_pytorch(codebook: torch.Tensor):
    from vector_quantize_pytorch import VectorQuantize

    num_codes, dim = codebook.shape
    quantizer = VectorQuantize(dim=dim, codebook_size=num_codes, accept_image_fmap=True).eval()
    quantizer.codebook = codebook  # the property's setter copies into the EMA codebook buffer

    def call(latents):
        _, indices, _ = quantizer(latents)
        return indices.reshape(-1)

    return call


def build_diffusers(codebook: torch.Tensor):
    try:
        from diffusers.models.autoencoders.vae import VectorQuantizer
    except ImportError:  # diffusers < 0.25
        from diffusers.models.vae import VectorQuantizer

    num_codes, dim = codebook.shape
    quantizer = VectorQuantizer(num_codes, dim, beta=0.25, legacy=False).eval()
    quantizer.embedding.weight.data.copy_(codebook)

    def call(latents):
        _, _, (_, _, indices) = quantizer(latents)
        return indices.reshape(-1)

    return call


def build_chameleon(codebook: torch.Tensor):
    from transformers.models.chameleon.configuration_chameleon import ChameleonVQVAEConfig
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAEVectorQuantizer

    num_codes, dim = codebook.shape
    quantizer = ChameleonVQVAEVectorQuantizer(ChameleonVQVAEConfig(embed_dim=dim, num_embeddings=num_codes))
    quantizer.eval()
    quantizer.embedding.weight.data.copy_(codebook)

    def call(latents):
        _, _, indices = quantizer(latents)
        return indices.reshape(-1)

    return call


def build_cdist(codebook: torch.Tensor):
    def call(latents):
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        return torch.cdist(flat, codebook).argmin(dim=1)

    return call


BUILDERS = {
    "ours": build_ours,
    "ours-rows": build_ours_rows,
    "vector-quantize-pytorch": build_vector_quantize_pytorch,
    "diffusers": build_diffusers,
    "chameleon": build_chameleon,
    "cdist": build_cdist,
}


# ------------------------------------------------------------------------------------------------ data


def make_inputs(num_vectors: int, dim: int, num_codes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents `[B, D, 32, 32]` (or `[1, D, 1, N]` when N is not a multiple of 1024) and a codebook `[K, D]`,
    both standard normal, from `seed`: every process builds the same ones."""
    generator = torch.Generator().manual_seed(seed)
    if num_vectors % (SPATIAL * SPATIAL) == 0:
        shape = (num_vectors // (SPATIAL * SPATIAL), dim, SPATIAL, SPATIAL)
    else:
        shape = (1, dim, 1, num_vectors)
    latents = torch.randn(shape, generator=generator)
    codebook = torch.randn(num_codes, dim, generator=generator)
    return latents, codebook


@torch.no_grad()
def check_against_float64(
    latents: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor, num_rows: int
) -> dict:
    """Compare `codes` on `num_rows` evenly spaced vectors with the float64 nearest code."""
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    rows = torch.linspace(0, flat.shape[0] - 1, min(num_rows, flat.shape[0])).round().long().unique()
    vectors = flat[rows].double()
    book = codebook.double()
    book_sq = book.pow(2).sum(1)
    vectors_sq = vectors.pow(2).sum(1)
    best = torch.full((rows.shape[0],), float("inf"), dtype=torch.float64)
    best_code = torch.zeros(rows.shape[0], dtype=torch.long)
    for start in range(0, book.shape[0], 4096):
        chunk = book[start : start + 4096]
        distances = vectors_sq[:, None] - 2 * vectors @ chunk.t() + book_sq[start : start + 4096][None, :]
        value, index = distances.min(dim=1)
        better = value < best
        best = torch.where(better, value, best)
        best_code = torch.where(better, index + start, best_code)
    chosen = codes.reshape(-1)[rows].long().clamp(0, book.shape[0] - 1)
    chosen_distance = (vectors - book[chosen]).pow(2).sum(1)
    tolerance = TIE_RTOL * (vectors_sq + book_sq[chosen])
    out_of_range = (codes.reshape(-1)[rows] < 0) | (codes.reshape(-1)[rows] >= book.shape[0])
    beyond_ties = (chosen_distance - best > tolerance) | out_of_range
    return {
        "checked_rows": int(rows.shape[0]),
        "differs_from_float64": float((chosen != best_code).double().mean()),
        "differs_beyond_ties": float(beyond_ties.double().mean()),
    }


# ---------------------------------------------------------------------------------------------- one case


def run_case(case: dict) -> dict:
    """Build one implementation, time it, measure its extra memory, check its codes. Runs in the worker."""
    threads_before = torch.get_num_threads()
    try:
        return _run_case(case)
    finally:  # with --isolation none the next case runs in this process
        CASE_RESOURCES.close()
        torch.set_num_threads(threads_before)


def _run_case(case: dict) -> dict:
    result = {"status": "ok", "load_average_start": common.load_average()}
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    threads = result["torch_threads"] = torch.get_num_threads()
    try:
        latents, codebook = make_inputs(case["n"], case["dim"], case["k"], case["seed"])
        if case["impl"] == "ours-rows":
            result["search_workers"] = case.get("search_workers") or threads
            function = build_ours_rows(codebook.clone(), result["search_workers"])
            result["torch_threads_of_the_calls"] = torch.get_num_threads()
        else:
            function = BUILDERS[case["impl"]](codebook.clone())
    except ImportError as error:
        return {**result, "status": "missing", "error": f"{type(error).__name__}: {error}"}

    # The peak with the case's torch threads, also where the case's own calls set another count.
    peak = common.MatmulPeak(case["peak_size"], threads=threads)

    def call():
        with torch.no_grad():
            return function(latents)

    gc.collect()
    soft_limit, hard_limit = resource.getrlimit(resource.RLIMIT_AS)
    memory = common.PeakMemory()
    memory.start()
    if case.get("max_memory_bytes"):
        common.limit_extra_memory(case["max_memory_bytes"])
    try:
        times, codes = common.time_calls(
            call, case["repeats"], warmup=1, budget_s=case.get("budget_s"), between=peak.sample
        )
    except (RuntimeError, MemoryError) as error:
        if not common.is_out_of_memory(error):
            raise
        codes = None
        times = []
        result["status"] = "out of memory"
        result["error"] = str(error).splitlines()[0][:300]
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft_limit, hard_limit))
    result["peak_extra_memory_bytes"] = memory.extra_bytes()
    if not peak.samples:  # the case failed before its first timed call
        peak.sample()
    result["matmul_peak_gflops"] = peak.gflops()
    result["matmul_peak_samples"] = [round(s, 2) for s in peak.samples]
    result["memory_measure"] = "VmHWM reset" if memory.resettable else "ru_maxrss"
    if codes is None:
        del latents, codebook
        return result

    seconds = common.median(times)
    flops = 2 * case["n"] * case["k"] * case["dim"]
    result.update(
        times_s=[round(t, 6) for t in times],
        median_s=seconds,
        vectors_per_s=case["n"] / seconds,
        gflops=flops / seconds / 1e9,
        share_of_peak=flops / seconds / 1e9 / result["matmul_peak_gflops"],
    )
    result.update(check_against_float64(latents, codebook, codes, case["check_rows"]))
    result["load_average_end"] = common.load_average()
    return result


def worker_main(case_json: str) -> None:
    case = json.loads(case_json)
    try:
        result = run_case(case)
    except Exception as error:  # noqa: BLE001 - reported to the parent as this case's status
        result = {"status": "error", "error": f"{type(error).__name__}: {error}"[:500]}
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", choices=["full", "small"], default="full", help="small: a smoke run")
    parser.add_argument(
        "--ks", help="codebook sizes, comma-separated (default 512,8192,65536; small: 64,512)"
    )
    parser.add_argument("--n", type=int, help="vectors (default 65536 = 64 x 32 x 32; small: 2048)")
    parser.add_argument("--dim", type=int, default=64, help="code dimension D")
    parser.add_argument(
        "--repeats", type=int, help="timed calls per case after one warm-up (default 5; small: 2)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case, import included")
    parser.add_argument(
        "--max-memory-gib",
        type=float,
        default=8.0,
        help="extra address space a case may take before it counts as out of memory (0: no cap)",
    )
    parser.add_argument("--impls", default=",".join(IMPLEMENTATIONS), help="which implementations")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument(
        "--search-workers",
        type=int,
        default=None,
        help="workers of ours-rows (default: the torch threads); ours-rows runs only with more than one",
    )
    parser.add_argument("--check-rows", type=int, default=4096, help="vectors checked against float64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--isolation",
        choices=["process", "none"],
        default="process",
        help="process: a fresh Python per case (memory figures are per case); none: all in this process",
    )
    parser.add_argument("--output", default=str(common.default_output("quantizer")), help="JSON lines file")
    args = parser.parse_args(argv)
    small = args.sizes == "small"
    args.ks = [int(k) for k in (args.ks or ("64,512" if small else "512,8192,65536")).split(",")]
    args.n = args.n or (2048 if small else 65536)
    args.repeats = args.repeats or (2 if small else 5)
    args.impls = [name.strip() for name in args.impls.split(",") if name.strip()]
    unknown = sorted(set(args.impls) - set(IMPLEMENTATIONS))
    if unknown:
        parser.error(f"unknown implementations {unknown}; choose from {list(IMPLEMENTATIONS)}")
    return args


def describe_case(record: dict) -> list:
    status = record["status"]
    ok = status == "ok"
    memory = record.get("peak_extra_memory_bytes")
    return [
        record["label"],
        record["k"],
        status if ok else f"**{status}**",
        common.fmt(record["median_s"] * 1e3) if ok else "-",
        common.fmt(record["vectors_per_s"]) if ok else "-",
        common.fmt(record["gflops"]) if ok else "-",
        f"{record['share_of_peak']:.0%}" if ok else "-",
        common.fmt(record.get("matmul_peak_gflops")),
        f"{memory / 2**20:.0f} MiB" if memory is not None else "-",
        f"{record['differs_beyond_ties']:.2%}" if ok else "-",
        f"{record['speedup_of_ours']:.2f}x" if record.get("speedup_of_ours") else "-",
        f"{record['normalised_speedup_of_ours']:.2f}x" if record.get("normalised_speedup_of_ours") else "-",
    ]


HEADERS = [
    "implementation",
    "K",
    "status",
    "median ms",
    "vectors/s",
    "GFLOP/s",
    "% of peak",
    "peak GFLOP/s",
    "extra memory",
    "wrong codes",
    "ours is",
    "ours is (load-normalised)",
]


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = common.environment(args.threads)
    print(f"# Nearest-code benchmark: N={args.n}, D={args.dim}, K in {args.ks}")
    print(f"# {common.describe_environment(env)}")
    workers = args.search_workers or torch.get_num_threads()
    if "ours-rows" in args.impls and workers < 2:
        args.impls.remove("ours-rows")
        print("# ours-rows left out: with one worker it is ours (pass --search-workers 2 or more)")
    missing = [name for name in args.impls if not common.module_available(IMPLEMENTATIONS[name][1])]
    if missing:
        print(f"# not installed, reported as missing: {missing} (pip install -e '.[bench]')")
    print(
        "# 'wrong codes': share of checked vectors whose code is farther than the float64 nearest by more "
        f"than an fp32 tie ({TIE_RTOL:g} x (|z|^2 + |e|^2)); 'ours is': our speed over this one's, from the "
        "median times and load-normalised (from the shares of the matmul peak sampled between each case's calls)",
        flush=True,
    )
    records: list[dict] = []
    for num_codes in args.ks:
        rows = []
        for name in args.impls:
            case = {
                "impl": name,
                "k": num_codes,
                "n": args.n,
                "dim": args.dim,
                "repeats": args.repeats,
                "seed": args.seed,
                "threads": args.threads,
                "search_workers": args.search_workers,
                "check_rows": args.check_rows,
                "budget_s": args.timeout / 2,
                "max_memory_bytes": int(args.max_memory_gib * 2**30) if args.max_memory_gib else None,
                "peak_size": 1024 if args.sizes == "small" else 2048,
            }
            record = {
                "benchmark": "quantizer",
                "impl": name,
                "label": IMPLEMENTATIONS[name][0],
                "k": num_codes,
                "n": args.n,
                "dim": args.dim,
                "isolation": args.isolation,
                "max_memory_gib": args.max_memory_gib,
                "timeout_s": args.timeout,
            }
            started = time.time()
            if name in missing:
                record.update(status="missing", error=f"{IMPLEMENTATIONS[name][1]} is not installed")
            elif args.isolation == "process":
                status, result, stderr = common.run_worker(Path(__file__), case, args.timeout)
                record.update(result or {})
                if status != "ok":
                    record["status"] = status if status != "killed" else "killed (out of memory?)"
                    if status == "timeout":
                        record["error"] = f"no result within {args.timeout:g} s"
                    elif stderr and "error" not in record:
                        record["error"] = stderr.strip().splitlines()[-1][:300]
            else:
                try:
                    record.update(run_case(case))
                except Exception as error:  # noqa: BLE001 - reported as this case's status
                    record.update(status="error", error=f"{type(error).__name__}: {error}"[:500])
            record["wall_s"] = round(time.time() - started, 1)
            rows.append(record)
        # Two speed-ups of ours: raw (median times, taken minutes apart on a shared machine) and
        # load-normalised (each case's rate as a share of the matmul peak sampled between its own calls).
        ours = next((r for r in rows if r["impl"] == "ours" and r["status"] == "ok"), None)
        for record in rows:
            if ours and record["status"] == "ok" and record is not ours:
                record["speedup_of_ours"] = record["median_s"] / ours["median_s"]
                record["normalised_speedup_of_ours"] = ours["share_of_peak"] / record["share_of_peak"]
        others = [r for r in rows if r["impl"] not in OURS and r["status"] == "ok"]
        variants = [r for r in rows if r["impl"] in OURS and r["status"] == "ok"]
        for variant in variants:
            fastest = min(others, key=lambda r: r["median_s"], default=None)
            variant["fastest_other"] = fastest["impl"] if fastest else None
            variant["speedup_over_fastest_other"] = (
                fastest["median_s"] / variant["median_s"] if fastest else None
            )
            fastest = max(others, key=lambda r: r["share_of_peak"], default=None)
            variant["fastest_other_normalised"] = fastest["impl"] if fastest else None
            variant["normalised_speedup_over_fastest_other"] = (
                variant["share_of_peak"] / fastest["share_of_peak"] if fastest else None
            )
        for record in rows:
            record.update(env)
        common.append_jsonl(args.output, rows)
        records.extend(rows)
        print()
        print(common.format_table(HEADERS, [describe_case(r) for r in rows]))
        for variant in variants:
            summary = f"K={num_codes}: {variant['impl']} reaches {variant['share_of_peak']:.0%} of the fp32 matmul peak"
            if variant.get("speedup_over_fastest_other"):
                summary += (
                    f"; {variant['speedup_over_fastest_other']:.2f}x the fastest other "
                    f"({variant['fastest_other']}), {variant['normalised_speedup_over_fastest_other']:.2f}x "
                    f"load-normalised ({variant['fastest_other_normalised']})"
                )
            print(summary)
        for record in rows:
            if record["status"] not in ("ok", "missing") and record.get("error"):
                print(f"  {record['impl']}: {record['error']}")
        sys.stdout.flush()
    print(f"\n# load average at the end: {common.load_average()}; results appended to {args.output}")
    return records


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2])
    else:
        main()
