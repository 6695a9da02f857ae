"""Shared helpers of the benchmark scripts: the machine and versions record, JSON lines, tables, timing,
the fp32 matmul peak, and memory high-water marks.

Imports only the standard library and torch, so every script runs (and says which peers are missing)
without the `bench` extra.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
REPO_ROOT = BENCHMARKS_DIR.parent

# Distributions whose versions go into every record (those not installed are recorded as None).
RECORDED_PACKAGES = (
    "vq-tokenizer",
    "torch",
    "transformers",
    "accelerate",
    "numpy",
    "vector-quantize-pytorch",
    "diffusers",
    "psutil",
)


# ------------------------------------------------------------------------------------------ environment


def package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def module_available(module: str) -> bool:
    """Whether `module` can be imported, without importing it (peer imports take seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def total_memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def environment(threads: int | None = None) -> dict:
    """What a figure depends on: date, machine, load, threads and package versions."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "memory_gib": total_memory_gib(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "load_average": load_average(),
        "versions": {name: package_version(name) for name in RECORDED_PACKAGES},
        "git_commit": git_commit(),
    }


def describe_environment(env: dict) -> str:
    machine = env["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v is not None)
    load = env["load_average"]
    return (
        f"{env['date']} | {machine['cpu']}, {machine['cpu_count']} CPUs, {machine['memory_gib']} GiB | "
        f"torch threads {env['torch_threads']} | load average {load} | {versions}"
    )


# ---------------------------------------------------------------------------------------- output


def default_output(name: str) -> Path:
    return RESULTS_DIR / f"{name}.jsonl"


def append_jsonl(path: str | os.PathLike, records: Sequence[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=False) + "\n")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table (it reads in a terminal too)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 3) -> str:
    """Short human number: 3 significant digits, thousands with k/M/G."""
    if value is None:
        return "-"
    if value != value:  # NaN
        return "nan"
    magnitude = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            return f"{value / limit:.{digits}g}{suffix}"
    return f"{value:.{digits}g}"


# ---------------------------------------------------------------------------------------- timing


def time_calls(
    function: Callable[[], object],
    repeats: int,
    warmup: int = 1,
    budget_s: float | None = None,
    between: Callable[[], object] | None = None,
) -> tuple[list[float], object]:
    """Seconds of each of `repeats` calls after `warmup` untimed ones, and the last call's result.

    With `budget_s`, stops early (after at least one timed call) when another call would not fit. `between`
    (untimed here) runs before each timed call: the scripts time the matmul peak there, so that the peak and
    the case are sampled alternately, under the same load.
    """
    result = None
    started = time.perf_counter()
    for _ in range(warmup):
        result = function()
    times: list[float] = []
    for _ in range(repeats):
        if between is not None:
            between()
        begin = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - begin)
        if budget_s is not None and time.perf_counter() - started + statistics.median(times) > budget_s:
            break
    return times, result


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


class MatmulPeak:
    """This machine's fp32 matmul rate (GFLOP/s) with `threads` torch threads (default: the current count):
    square `size` GEMMs.

    Each `sample()` times one GEMM; `gflops()` is the median of the samples. Interleaved with the calls of a
    case (`time_calls(between=peak.sample)`), it measures the peak under the same load as the case. With
    `threads`, each sample sets torch's thread count for its GEMM and restores it (for a case whose own calls
    run with another count).
    """

    def __init__(self, size: int = 2048, threads: int | None = None) -> None:
        generator = torch.Generator().manual_seed(0)
        self.size = size
        self.threads = threads
        self.a = torch.randn(size, size, generator=generator)
        self.b = torch.randn(size, size, generator=generator)
        self.c = torch.empty(size, size)
        self.samples: list[float] = []
        self._mm()  # warm-up: threads started, pages touched

    def _mm(self) -> float:
        restore = torch.get_num_threads()
        switch = bool(self.threads) and self.threads != restore
        if switch:
            torch.set_num_threads(self.threads)
        try:
            begin = time.perf_counter()
            torch.mm(self.a, self.b, out=self.c)
            return time.perf_counter() - begin
        finally:
            if switch:
                torch.set_num_threads(restore)

    def sample(self) -> None:
        self.samples.append(2 * self.size**3 / self._mm() / 1e9)

    def gflops(self) -> float:
        return median(self.samples)


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Median fp32 GEMM rate (GFLOP/s) of `repeats` square `size` GEMMs, now, with the current threads."""
    peak = MatmulPeak(size)
    for _ in range(repeats):
        peak.sample()
    return peak.gflops()


# ---------------------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """High-water mark of this process's resident memory above the level at `start()`.

    Linux lets a process reset its own high-water mark (VmHWM, via /proc/self/clear_refs), so the peak of
    one case is measured even after a bigger setup; elsewhere it falls back to ru_maxrss, which never goes
    down (then a fresh process per case is what makes it exact, as the scripts do by default).
    """

    def __init__(self) -> None:
        self.baseline_kib = 0
        self.resettable = False

    def start(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.resettable = True
        except OSError:
            self.resettable = False
        self.baseline_kib = _status_kib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def peak_kib(self) -> int:
        if self.resettable:
            peak = _status_kib("VmHWM")
            if peak is not None:
                return peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def extra_bytes(self) -> int:
        return max(0, self.peak_kib() - self.baseline_kib) * 1024


def limit_extra_memory(extra_bytes: int | None) -> None:
    """Make allocations beyond `extra_bytes` more address space fail with an out-of-memory error.

    The limit is on address space (RLIMIT_AS) above what the process maps now, so a case that needs more
    fails fast with the allocator's own error instead of pushing a shared machine into swap or the OOM killer.
    """
    if not extra_bytes:
        return
    mapped_kib = _status_kib("VmSize")
    if mapped_kib is None:
        return
    limit = mapped_kib * 1024 + extra_bytes
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or any(
        marker in text for marker in ("can't allocate memory", "cannot allocate memory", "out of memory")
    )


# ---------------------------------------------------------------------------------------- subprocess


def run_worker(
    script: Path, case: dict, timeout_s: float, extra_env: dict | None = None
) -> tuple[str, dict | None, str]:
    """Run `script --worker JSON` in a fresh Python; returns (status, result, stderr tail).

    status is "ok", "timeout", "killed" (e.g. by the kernel's OOM killer) or "error"; the worker prints its
    result as the last line of stdout, a JSON object.
    """
    command = [sys.executable, str(script), "--worker", json.dumps(case)]
    env = {**os.environ, **(extra_env or {})}
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr.decode() if isinstance(expired.stderr, bytes) else (expired.stderr or "")
        return "timeout", None, stderr[-2000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else None
    if completed.returncode < 0:
        return "killed", result, completed.stderr[-2000:]
    if completed.returncode != 0 or result is None:
        return "error", result, completed.stderr[-2000:]
    return "ok", result, completed.stderr[-2000:]
