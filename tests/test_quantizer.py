"""VQVAEVectorQuantizer and nearest_codes: usage tricks, exact chunked search, bounded memory, extremes."""

import json
import tempfile

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from vq_tokenizer import VQVAEConfig, VQVAEVectorQuantizer
from vq_tokenizer.modeling_vqvae import nearest_codes

# ----------------------------------------------------------------------------------------------- helpers

NUM_CLUSTERS, POINTS_PER_CLUSTER, DIM, CODEBOOK_SIZE = 64, 16, 8, 256


def clustered_latents(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """64 tight gaussian clusters (std 0.01) around N(10, 5^2) centres: far from the uniform(-1/K, 1/K)
    initial codebook. Returns latents `[1, D, N]` (an audio-shaped batch) and each point's cluster."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(NUM_CLUSTERS, DIM, generator=generator) * 5 + 10
    labels = torch.arange(NUM_CLUSTERS).repeat_interleave(POINTS_PER_CLUSTER)
    points = centers[labels] + 0.01 * torch.randn(len(labels), DIM, generator=generator)
    return points.t().unsqueeze(0), labels


def clustered_quantizer(**overrides) -> VQVAEVectorQuantizer:
    torch.manual_seed(0)
    config = VQVAEConfig(modality="audio", codebook_size=CODEBOOK_SIZE, codebook_dim=DIM, **overrides)
    return VQVAEVectorQuantizer(config)


def clusters_with_their_own_code(codes: torch.Tensor, labels: torch.Tensor) -> int:
    """How many clusters get a code that no other cluster's points use."""
    codes = codes.flatten()
    owners: dict[int, set[int]] = {}
    for code, label in zip(codes.tolist(), labels.tolist(), strict=True):
        owners.setdefault(code, set()).add(label)
    exclusive = {next(iter(labels_)) for labels_ in owners.values() if len(labels_) == 1}
    return len(exclusive)


def brute_force_float64(vectors: torch.Tensor, codebook: torch.Tensor):
    """Exact nearest code in float64, and which rows are clear (not near-ties)."""
    distances = torch.cdist(vectors.double(), codebook.double()).pow(2)
    two_best = distances.topk(2, dim=1, largest=False).values
    gap = two_best[:, 1] - two_best[:, 0]
    clear = gap >= 1e-4 * two_best[:, 1].clamp(min=1e-12)
    return distances.argmin(1), distances.min(1).values, clear


def peak_allocated_bytes(function) -> int:
    """Peak of the CPU allocator's live bytes during `function()`, measured by the PyTorch profiler."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    # The profiler's chrome trace carries, for every allocation and free, the allocator's running total.
    with tempfile.NamedTemporaryFile(suffix=".json") as trace:
        profiler.export_chrome_trace(trace.name)
        events = json.load(open(trace.name))["traceEvents"]
    memory = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    assert memory, "the profiler recorded no allocation"
    baseline = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in memory) - baseline


# ------------------------------------------------------------------------------------- codebook usage


def test_plain_vq_collapses_on_far_clusters():
    latents, labels = clustered_latents()
    quantizer = clustered_quantizer(kmeans_init=False, dead_code_threshold=0.0).train()
    for _ in range(4):
        output = quantizer(latents)
    # Measured: 7 of 256 codes (2.7%) serve all 64 clusters, and training steps do not fix it.
    assert output.codebook_usage.item() <= 0.05
    assert output.codes.unique().numel() <= 12
    assert clusters_with_their_own_code(output.codes, labels) <= 12


def test_kmeans_init_covers_the_clusters():
    latents, labels = clustered_latents()
    quantizer = clustered_quantizer(kmeans_init=True, dead_code_threshold=0.0).train()
    assert int(quantizer.initialized) == 0
    output = quantizer(latents)
    assert int(quantizer.initialized) == 1
    # Measured: all 64 clusters have a code of their own, 248 of 256 codes used (97%).
    assert clusters_with_their_own_code(output.codes, labels) >= 0.9 * NUM_CLUSTERS
    assert output.codebook_usage.item() >= 0.8
    # The codebook now sits on the data: every point is within a cluster's width of its code.
    _, squared_distances = nearest_codes(latents[0].t(), quantizer.embed)
    assert squared_distances.max().item() < 0.05
    quantizer.eval()
    with torch.no_grad():
        assert clusters_with_their_own_code(quantizer(latents).codes, labels) >= 0.9 * NUM_CLUSTERS


def test_dead_code_restarts_lift_usage():
    latents, labels = clustered_latents()
    quantizer = clustered_quantizer(kmeans_init=False, dead_code_threshold=1.0).train()
    usage = [quantizer(latents).codebook_usage.item() for _ in range(4)]
    # Measured: 2.7% on the first step (same collapse as plain VQ), then 86%, 90%, 90% after restarts.
    assert usage[0] <= 0.05
    assert min(usage[1:]) >= 0.6
    quantizer.eval()
    with torch.no_grad():
        assert clusters_with_their_own_code(quantizer(latents).codes, labels) >= 0.9 * NUM_CLUSTERS


def test_kmeans_init_with_l2_normalized_codes_and_lookup_dim():
    latents, _ = clustered_latents()
    for overrides in ({"use_l2_normalized_codes": True}, {"codebook_lookup_dim": 4}):
        quantizer = clustered_quantizer(kmeans_init=True, dead_code_threshold=0.0, **overrides).train()
        output = quantizer(latents)
        assert output.quantized.shape == latents.shape
        assert output.codes.shape == (1, NUM_CLUSTERS * POINTS_PER_CLUSTER)
        assert quantizer.codebook.shape == (CODEBOOK_SIZE, DIM)
        assert quantizer.embed.shape == (CODEBOOK_SIZE, quantizer.config.lookup_dim)
        if overrides.get("use_l2_normalized_codes"):
            norms = quantizer.embed.norm(dim=1)
            assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
        # lookup() and the forward agree on what a code means.
        looked_up = quantizer.lookup(output.codes)
        assert torch.allclose(looked_up, output.quantized, atol=1e-5)


# -------------------------------------------------------------------------------------- chunked search


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1 << 22])
@pytest.mark.parametrize("num_vectors, num_codes", [(101, 37), (20, 300), (96, 64)])
def test_chunked_search_equals_float64_brute_force(chunk_size, num_vectors, num_codes):
    generator = torch.Generator().manual_seed(num_vectors * 1000 + num_codes)
    vectors = torch.randn(num_vectors, 6, generator=generator)
    codebook = torch.randn(num_codes, 6, generator=generator)
    codes, squared = nearest_codes(vectors, codebook, chunk_size)
    expected, expected_squared, clear = brute_force_float64(vectors, codebook)
    assert codes.dtype == torch.int64 and codes.shape == (num_vectors,)
    assert squared.dtype == torch.float32
    assert clear.float().mean() > 0.9  # the comparison covers almost every row
    assert torch.equal(codes[clear], expected[clear])
    assert torch.allclose(squared.double(), expected_squared, rtol=1e-4, atol=1e-4)


def test_chunked_search_on_exact_duplicates_returns_a_nearest_code():
    # Rows that are exact copies of codes: the distance to their own code is 0 (up to rounding).
    generator = torch.Generator().manual_seed(5)
    codebook = torch.randn(50, 4, generator=generator)
    picks = torch.randint(0, 50, (40,), generator=generator)
    for chunk_size in (1, 7, 64, 1 << 22):
        codes, squared = nearest_codes(codebook[picks], codebook, chunk_size)
        assert torch.equal(codes, picks)
        assert squared.abs().max().item() < 1e-4


def test_search_is_fp32_for_half_inputs():
    generator = torch.Generator().manual_seed(6)
    vectors = torch.randn(200, 8, generator=generator).bfloat16()
    codebook = torch.randn(64, 8, generator=generator)
    codes, squared = nearest_codes(vectors, codebook, 64)
    expected, _, clear = brute_force_float64(vectors.float(), codebook)
    assert squared.dtype == torch.float32
    assert torch.equal(codes[clear], expected[clear])


def test_chunked_search_memory_is_bounded():
    num_vectors = num_codes = 4096
    generator = torch.Generator().manual_seed(7)
    vectors = torch.randn(num_vectors, 8, generator=generator)
    codebook = torch.randn(num_codes, 8, generator=generator)
    full_matrix = num_vectors * num_codes * 4  # 64 MiB of float32 distances

    # The measurement sees a full matrix when one is allocated (a small case that fits one CPU tile of
    # 2 MiB per thread, so one [512, 1024] distance block at any thread count).
    small = peak_allocated_bytes(lambda: nearest_codes(vectors[:512], codebook[:1024], 1 << 22))
    assert small >= 512 * 1024 * 4

    chunk_size = 1 << 16
    peak = peak_allocated_bytes(lambda: nearest_codes(vectors, codebook, chunk_size))
    # One tile buffer, the [K] code norms, the [N] outputs (float32 + int64) and per-tile temporaries,
    # with a factor 2 of slack for the implementation. Measured: 328,448 bytes (bound 720,896).
    bound = 2 * (chunk_size * 4 + num_codes * 4 + num_vectors * (4 + 8)) + (1 << 16)
    assert peak < bound, (peak, bound)
    assert peak < full_matrix / 50


# ------------------------------------------------------------------------------------------- extremes


@pytest.mark.parametrize(
    "overrides",
    [
        {"kmeans_init": False},
        {"kmeans_init": True},
        {"codebook_update": "loss"},
        {"use_l2_normalized_codes": True},
        {"codebook_lookup_dim": 4},
    ],
    ids=["plain", "kmeans", "loss", "l2", "lookup"],
)
def test_huge_magnitudes_never_give_out_of_range_codes(overrides):
    torch.manual_seed(0)
    quantizer = VQVAEVectorQuantizer(VQVAEConfig(codebook_size=16, codebook_dim=8, **overrides))
    signs = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(1)) > 0
    latents = torch.where(signs, torch.tensor(1e30), torch.tensor(-1e30))
    for mode in ("eval", "train", "train", "eval"):
        quantizer.train(mode == "train")
        with torch.no_grad():
            codes = quantizer(latents).codes
        assert codes.dtype == torch.int64 and codes.shape == (2, 6, 6)
        assert int(codes.min()) >= 0 and int(codes.max()) < 16, mode


def test_nearest_codes_stays_in_range_for_non_finite_distances():
    codebook = torch.randn(10, 4, generator=torch.Generator().manual_seed(2))
    codebook[3] = 1e30  # its squared norm overflows to inf in float32
    vectors = torch.tensor(
        [
            [1e30] * 4,
            [-1e30] * 4,
            [1e30, -1e30, 1e30, -1e30],
            [float("inf")] * 4,
            [float("nan")] * 4,
            [0.0] * 4,
        ]
    )
    for chunk_size in (1, 3, 1 << 22):
        codes, _ = nearest_codes(vectors, codebook, chunk_size)
        assert int(codes.min()) >= 0 and int(codes.max()) < 10
        assert codes[-1] != 3  # the ordinary row is not sent to the overflowing code
