"""Smoke tests: each benchmark script runs on a tiny size, in a subprocess, and writes its JSON lines.

They must pass without the `bench` extra (CI installs only `.[test]`): a peer that is not installed is
reported as missing and the script still runs ours. Here a peer is hidden behind a module that fails to
import, so the missing-peer path is exercised whether or not the extra is installed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def run_script(
    name: str, args: list[str], tmp_path: Path, hide: tuple[str, ...] = ()
) -> tuple[str, list[dict]]:
    output = tmp_path / f"{name}.jsonl"
    env = None
    if hide:
        # Shadow the peers with modules that raise ImportError, as if they were not installed.
        stubs = tmp_path / "hidden_peers"
        stubs.mkdir(exist_ok=True)
        for module in hide:
            (stubs / f"{module}.py").write_text(f"raise ImportError('{module} hidden by the test')\n")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stubs), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args, "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    for record in records:
        assert record["date"] and record["machine"]["cpu"] and record["versions"]["torch"]
    return completed.stdout, records


def test_quantizer_benchmark_smoke(tmp_path):
    stdout, records = run_script(
        "quantizer",
        [
            "--sizes", "small", "--ks", "64", "--n", "1024", "--threads", "1", "--isolation", "none",
            "--impls", "ours,cdist,vector-quantize-pytorch",
        ],
        tmp_path,
        hide=("vector_quantize_pytorch",),
    )  # fmt: skip
    by_impl = {record["impl"]: record for record in records}
    assert set(by_impl) == {"ours", "cdist", "vector-quantize-pytorch"}
    assert by_impl["vector-quantize-pytorch"]["status"] == "missing"
    for name in ("ours", "cdist"):
        record = by_impl[name]
        assert record["status"] == "ok", record
        assert record["median_s"] > 0 and record["vectors_per_s"] > 0 and record["gflops"] > 0
        assert 0 < record["share_of_peak"] and record["matmul_peak_gflops"] > 0
        assert record["peak_extra_memory_bytes"] >= 0
        assert record["differs_beyond_ties"] == 0.0
        assert record["checked_rows"] == 1024
    assert by_impl["ours"]["speedup_over_fastest_other"] > 0
    assert "| implementation" in stdout and "missing" in stdout


def test_quantizer_benchmark_isolates_cases_and_reports_out_of_memory(tmp_path):
    # One case in a fresh process with a memory cap far too small for a 65536 x 4096 distance matrix.
    _, records = run_script(
        "quantizer",
        [
            "--ks", "4096", "--n", "65536", "--threads", "1", "--impls", "cdist", "--repeats", "1",
            "--max-memory-gib", "0.25", "--check-rows", "64",
        ],
        tmp_path,
    )  # fmt: skip
    assert len(records) == 1
    record = records[0]
    assert record["isolation"] == "process"
    assert record["status"] == "out of memory", record
    assert "allocate" in record["error"]


def test_training_benchmark_smoke(tmp_path):
    # The step count binds, not the clock: a busy machine must not change what the run does.
    _, records = run_script(
        "training",
        [
            "--sizes", "small", "--seconds", "600", "--max-steps", "3", "--variants", "ours,vqp",
            "--train-images", "128", "--eval-images", "32", "--threads", "1",
        ],
        tmp_path,
        hide=("vector_quantize_pytorch",),
    )  # fmt: skip
    by_variant = {record["variant"]: record for record in records}
    assert by_variant["vqp"]["status"] == "missing"
    ours = by_variant["ours"]
    assert ours["status"] == "ok", ours
    assert ours["steps"] == 3 and ours["steps_per_s"] > 0 and ours["images_per_s"] > 0
    assert math.isfinite(ours["test_psnr"]) and 0 < ours["codebook_usage"] <= 1 and ours["perplexity"] >= 1


def test_training_benchmark_peer_quantizers_train(tmp_path):
    # The vector-quantize-pytorch peers behind our quantizer interface train in our model (bench extra only).
    pytest.importorskip("vector_quantize_pytorch")
    _, records = run_script(
        "training",
        [
            "--sizes", "small", "--seconds", "600", "--max-steps", "2", "--variants", "vqp-fsq,vqp-rvq-3x8",
            "--train-images", "128", "--eval-images", "32", "--threads", "1",
        ],
        tmp_path,
    )  # fmt: skip
    for record in records:
        assert record["status"] == "ok", record
        assert record["steps"] == 2 and math.isfinite(record["test_psnr"]) and 0 < record["codebook_usage"] <= 1


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_encode_benchmark_smoke(tmp_path, modality):
    stdout, records = run_script(
        "encode",
        [
            "--sizes",
            "small",
            "--modality",
            modality,
            "--batch-sizes",
            "1,2",
            "--repeats",
            "1",
            "--threads",
            "1",
        ],
        tmp_path,
    )
    assert "freshly initialised" in stdout
    assert [(r["batch_size"], r["precision"]) for r in records] == [
        (1, "fp32"),
        (1, "bf16"),
        (2, "fp32"),
        (2, "bf16"),
    ]
    for record in records:
        assert record["modality"] == modality and record["throughput"] > 0
        assert record["throughput_unit"] == ("images/s" if modality == "image" else "audio s/s")
    assert all(0 <= r["codes_equal_to_fp32"] <= 1 for r in records if r["precision"] == "bf16")
