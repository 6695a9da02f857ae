"""The quantizer types alone (issue 13): residual VQ and FSQ against their peers, on the same input and weights.

    python benchmarks/quantizer_types.py                    # N = 65536 vectors of D = 64; RVQ 8 levels, K = 256, 1024, 4096
    python benchmarks/quantizer_types.py --sizes small      # smoke run (seconds)

RVQ: 8 levels of K codes, the same codebooks (standard normal, scaled down level by level) copied into ours
(`VQVAEResidualVectorQuantizer`, eval mode), vector-quantize-pytorch `ResidualVQ` (eval mode) and transformers'
`EncodecResidualVectorQuantizer` (`encode` then `decode`). Each maps latents `[B, D, T]` to codes of every level
and their summed code vectors, without gradients. FSQ: levels [8, 5, 5, 5] with the same projections D -> 4 -> D
in ours (`VQVAEFiniteScalarQuantizer`) and vector-quantize-pytorch `FSQ`. Per case: median ms of `--repeats`
calls after a warm-up, vectors/s, the peak extra resident memory during the calls (Linux `VmHWM` after
`/proc/self/clear_refs`), and the share of codes that agree with ours. Ours runs at every K (memory flat in K);
the peers at every K up to `--peer-max-k`. Results are printed as a table and appended as JSON lines to
benchmarks/results/quantizer_types.jsonl.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LEVELS = 8
FSQ_LEVELS = [8, 5, 5, 5]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(function, repeats: int) -> dict:
    """Median seconds of `repeats` calls after one warm-up, and the extra resident memory at their peak."""
    gc.collect()
    result = function()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _rss_kib("VmRSS")
    except OSError:
        before = None
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    extra = None if before is None else max(0, _rss_kib("VmHWM") - before) / 1024
    return {"median_s": statistics.median(times), "extra_memory_mib": extra, "result": result}


def rvq_codebooks(num_codes: int, dim: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(num_codes, dim, generator=generator) * 0.5**level for level in range(LEVELS)]


def build_rvq(name: str, codebooks: list[torch.Tensor]):
    """A function latents `[B, D, T]` -> (codes `[B, Q, T]`, quantized `[B, D, T]`)."""
    num_codes, dim = codebooks[0].shape
    if name == "ours":
        from vq_tokenizer import VQVAEConfig
        from vq_tokenizer.quantization_vqvae import VQVAEResidualVectorQuantizer

        config = VQVAEConfig(
            modality="audio",
            quantizer_type="rvq",
            num_quantizers=LEVELS,
            codebook_size=num_codes,
            codebook_dim=dim,
        )
        quantizer = VQVAEResidualVectorQuantizer(config).eval()
        for level, codebook in zip(quantizer.levels, codebooks, strict=True):
            level.embed.data.copy_(codebook)

        def run(latents):
            output = quantizer(latents)
            return output.codes, output.quantized

        return run
    if name == "vector-quantize-pytorch":
        from vector_quantize_pytorch import ResidualVQ

        quantizer = ResidualVQ(dim=dim, num_quantizers=LEVELS, codebook_size=num_codes).eval()
        for layer, codebook in zip(quantizer.layers, codebooks, strict=True):
            layer._codebook.embed.data.copy_(codebook[None])

        def run(latents):
            quantized, codes, _ = quantizer(latents.transpose(1, 2))
            return codes.transpose(1, 2), quantized.transpose(1, 2)

        return run
    if name == "transformers-encodec":
        from torch import nn
        from transformers import EncodecConfig
        from transformers.models.encodec.modeling_encodec import (
            EncodecResidualVectorQuantizer,
            EncodecVectorQuantization,
        )

        config = EncodecConfig(codebook_size=num_codes, hidden_size=dim, codebook_dim=dim)
        quantizer = EncodecResidualVectorQuantizer(config).eval()
        quantizer.layers = nn.ModuleList(EncodecVectorQuantization(config) for _ in range(LEVELS))
        quantizer.num_quantizers = LEVELS
        for layer, codebook in zip(quantizer.layers, codebooks, strict=True):
            layer.codebook.embed.copy_(codebook)

        def run(latents):
            codes = quantizer.encode(latents)  # [Q, B, T]
            return codes.transpose(0, 1), quantizer.decode(codes)

        return run
    raise ValueError(name)


def build_fsq(name: str, dim: int, seed: int):
    from vq_tokenizer import VQVAEConfig
    from vq_tokenizer.quantization_vqvae import VQVAEFiniteScalarQuantizer

    torch.manual_seed(seed)
    ours = VQVAEFiniteScalarQuantizer(
        VQVAEConfig(modality="audio", quantizer_type="fsq", fsq_levels=FSQ_LEVELS, codebook_dim=dim)
    ).eval()
    if name == "ours":

        def run(latents):
            output = ours(latents)
            return output.codes, output.quantized

        return run
    from vector_quantize_pytorch import FSQ

    peer = FSQ(levels=FSQ_LEVELS, dim=dim, channel_first=True).eval()
    peer.project_in.load_state_dict(ours.project_in.state_dict())
    peer.project_out.load_state_dict(ours.project_out.state_dict())

    def run(latents):
        quantized, codes = peer(latents)
        return codes, quantized

    return run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", choices=["full", "small"], default="full")
    parser.add_argument("--ks", default=None, help="RVQ codebook sizes (default 256,1024,4096)")
    parser.add_argument("--peer-max-k", type=int, default=1024, help="largest K the peers run at")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(common.default_output("quantizer_types")))
    args = parser.parse_args(argv)
    small = args.sizes == "small"
    args.ks = [int(k) for k in (args.ks or ("64,256" if small else "256,1024,4096")).split(",")]
    args.batch, args.length, args.dim = (4, 256, 16) if small else (64, 1024, 64)
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = common.environment(args.threads)
    num_vectors = args.batch * args.length
    print(f"# Quantizer types alone: N = {num_vectors} vectors of D = {args.dim}, {args.repeats} calls each")
    print(f"# {common.describe_environment(env)}", flush=True)
    latents = torch.randn(
        args.batch, args.dim, args.length, generator=torch.Generator().manual_seed(args.seed)
    )
    records = []

    def run_case(kind: str, name: str, num_codes: int, builder, reference=None):
        record = {"benchmark": "quantizer_types", "kind": kind, "implementation": name, "K": num_codes,
                  "N": num_vectors, "D": args.dim, "status": "ok", "load_average_start": common.load_average()}  # fmt: skip
        try:
            with torch.no_grad():
                run = builder()
                measured = measure(lambda: run(latents), args.repeats)
            codes = measured.pop("result")[0]
            record.update(measured, vectors_per_s=num_vectors / measured["median_s"])
            if reference is not None:
                record["codes_agree"] = float((codes.long() == reference).float().mean())
            record["codes"] = codes.long()
        except ImportError as error:
            record.update(status="missing", error=str(error)[:300])
        except Exception as error:  # noqa: BLE001 - reported as the case's status
            record.update(status="error", error=f"{type(error).__name__}: {error}"[:300])
        record["load_average_end"] = common.load_average()
        records.append(record)
        print(f"# {kind} K={num_codes} {name}: {record['status']} "
              f"{record.get('median_s', 0) * 1000:.1f} ms", flush=True)  # fmt: skip
        return record

    for num_codes in args.ks:
        codebooks = rvq_codebooks(num_codes, args.dim, args.seed + num_codes)
        ours = run_case("rvq", "ours", num_codes, lambda cb=codebooks: build_rvq("ours", cb))
        if num_codes <= args.peer_max_k:
            for name in ("vector-quantize-pytorch", "transformers-encodec"):
                run_case(
                    "rvq", name, num_codes, lambda n=name, cb=codebooks: build_rvq(n, cb), ours.get("codes")
                )
    # (FSQ codes are not compared: the two bound the dimensions differently, so their grids differ.) A call
    # takes milliseconds, so the order matters: both run once as a warm-up round, then the round that counts.
    for warm_up in (True, False):
        run_case("fsq", "ours", 1000, lambda: build_fsq("ours", args.dim, args.seed))
        run_case("fsq", "vector-quantize-pytorch", 1000, lambda: build_fsq("vqp", args.dim, args.seed))
        if warm_up:
            del records[-2:]

    rows = []
    for record in records:
        record.pop("codes", None)
        record.update(env)
        ok = record["status"] == "ok"
        peer_time = None
        if ok and record["implementation"] != "ours":
            ours_time = next(
                r["median_s"] for r in records
                if r["kind"] == record["kind"] and r["K"] == record["K"] and r["implementation"] == "ours"
            )  # fmt: skip
            peer_time = record["median_s"] / ours_time
            record["ours_speedup"] = peer_time
        rows.append([
            record["kind"], record["K"], record["implementation"], record["status"],
            f"{record['median_s'] * 1000:.1f}" if ok else "-",
            common.fmt(record["vectors_per_s"]) if ok else "-",
            f"{record['extra_memory_mib']:.0f} MiB" if ok and record["extra_memory_mib"] is not None else "-",
            f"{record['codes_agree']:.1%}" if "codes_agree" in record else "-",
            f"{peer_time:.2f}x" if peer_time else "-",
        ])  # fmt: skip
    common.append_jsonl(args.output, records)
    headers = ["type", "K", "implementation", "status", "median ms", "vectors/s", "extra memory",
               "codes = ours", "ours is"]  # fmt: skip
    print()
    print(common.format_table(headers, rows))
    print(f"\n# load average at the end: {common.load_average()}; results appended to {args.output}")
    return records


if __name__ == "__main__":
    main()
