"""Smoke runs of the issue-13 benchmarks (tiny sizes, in a subprocess), with the peers hidden: they are reported
as missing and ours still runs (as tests/test_benchmarks.py does for the others)."""

from __future__ import annotations

from test_benchmarks import run_script


def test_quantizer_types_benchmark_smoke(tmp_path):
    stdout, records = run_script(
        "quantizer_types", ["--sizes", "small", "--ks", "32", "--repeats", "1", "--threads", "1"], tmp_path,
        hide=("vector_quantize_pytorch",),
    )  # fmt: skip
    by_case = {(r["kind"], r["implementation"]): r for r in records}
    assert by_case[("rvq", "ours")]["status"] == "ok" and by_case[("fsq", "ours")]["status"] == "ok"
    assert by_case[("rvq", "vector-quantize-pytorch")]["status"] == "missing"
    assert by_case[("fsq", "vector-quantize-pytorch")]["status"] == "missing"
    encodec = by_case[("rvq", "transformers-encodec")]
    assert encodec["status"] == "ok" and encodec["codes_agree"] == 1.0  # the same codebooks, the same codes
    assert "| type" in stdout


def test_training_benchmark_runs_every_quantizer_type_and_draws_them(tmp_path):
    picture = tmp_path / "rows.png"
    variants = "ours,gumbel,fsq,rvq-3x8,rvq-2x512,vqp-fsq"
    _, records = run_script(
        "training",
        ["--sizes", "small", "--seconds", "1", "--max-steps", "2", "--variants", variants, "--picture", str(picture)],
        tmp_path,
        hide=("vector_quantize_pytorch",),
    )  # fmt: skip
    by_variant = {r["variant"]: r for r in records}
    assert by_variant["vqp-fsq"]["status"] == "missing"
    for name in ("ours", "gumbel", "fsq", "rvq-3x8", "rvq-2x512"):
        assert by_variant[name]["status"] == "ok", by_variant[name]
    bits = {name: by_variant[name]["bits_per_image"] for name in ("fsq", "rvq-3x8", "rvq-2x512")}
    # 49 positions; the smoke size has K = 64 where the full one has 512: 2 levels of 6 bits.
    assert bits == {"fsq": 441.0, "rvq-3x8": 441.0, "rvq-2x512": 588.0}
    assert picture.is_file()
