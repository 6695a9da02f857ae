"""VQVAEVectorQuantizer and nearest_codes: usage tricks, a pure lookup path, exact chunked search, bounded
memory, no process-wide state, extremes."""

import json
import sys
import tempfile
import threading

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from two_ranks import run_two_ranks

from vq_tokenizer import VQVAEConfig, VQVAEVectorQuantizer
from vq_tokenizer.quantization_vqvae import nearest_codes, parallel_nearest_codes

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


def training_step(quantizer: VQVAEVectorQuantizer, latents: torch.Tensor):
    """What VQVAEModel.forward does with its quantizer in training."""
    quantizer.initialize(latents)
    return quantizer.update(latents, quantizer.quantize(latents))


def state(module: torch.nn.Module) -> dict:
    return {key: value.clone() for key, value in module.state_dict().items()}


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


class HostReads(TorchDispatchMode):
    """Records every read of a tensor's value back to the host (`.item()`, `int()`, `bool()`, `float()`)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


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
        output = training_step(quantizer, latents)
    # Measured: 7 of 256 codes (2.7%) serve all 64 clusters, and training steps do not fix it.
    assert output.codebook_usage.item() <= 0.05
    assert output.codes.unique().numel() <= 12
    assert clusters_with_their_own_code(output.codes, labels) <= 12


def test_kmeans_init_covers_the_clusters():
    latents, labels = clustered_latents()
    quantizer = clustered_quantizer(kmeans_init=True, dead_code_threshold=0.0).train()
    assert int(quantizer.initialized) == 0
    output = training_step(quantizer, latents)
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
    usage = [training_step(quantizer, latents).codebook_usage.item() for _ in range(4)]
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
        output = training_step(quantizer, latents)
        assert output.quantized.shape == latents.shape
        assert output.codes.shape == (1, NUM_CLUSTERS * POINTS_PER_CLUSTER)
        assert quantizer.codebook.shape == (CODEBOOK_SIZE, DIM)
        assert quantizer.embed.shape == (CODEBOOK_SIZE, quantizer.config.lookup_dim)
        if overrides.get("use_l2_normalized_codes"):
            norms = quantizer.embed.norm(dim=1)
            assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
        # lookup() and quantize() agree on what a code means.
        output = quantizer.quantize(latents)
        assert torch.allclose(quantizer.lookup(output.codes), output.quantized, atol=1e-5)


# ---------------------------------------------------------------------------------- lookup vs learning


@pytest.mark.parametrize(
    "overrides",
    [{}, {"codebook_update": "loss"}, {"use_l2_normalized_codes": True, "codebook_lookup_dim": 4}],
    ids=["ema", "loss", "l2-lookup"],
)
@pytest.mark.parametrize("kmeans_done", [False, True])
def test_quantize_and_lookup_change_nothing_in_train_mode(overrides, kmeans_done):
    latents, _ = clustered_latents()
    latents.requires_grad_()  # gradients flow as in training
    quantizer = clustered_quantizer(**overrides).train()
    if kmeans_done:
        training_step(quantizer, latents)
    before = state(quantizer)
    for _ in range(2):
        output = quantizer.quantize(latents)
        (output.quantized.sum() + output.commitment_loss + output.codebook_loss).backward()
        quantizer(latents)  # forward is quantize
        quantizer.lookup(output.codes)
    assert_same_state(before, state(quantizer))
    assert int(quantizer.initialized) == int(kmeans_done)


def test_learning_path_changes_the_codebook_and_reports_all_processes_statistics():
    latents, _ = clustered_latents()
    quantizer = clustered_quantizer(kmeans_init=False, dead_code_threshold=1.0).train()
    before = state(quantizer)
    quantizer.initialize(latents)  # no k-means asked: nothing to do
    assert_same_state(before, state(quantizer))
    output = quantizer.quantize(latents)
    local = (output.perplexity.clone(), output.codebook_usage.clone())
    updated = quantizer.update(latents, output)
    assert updated is output
    # One process: the statistics of all processes are this batch's.
    assert torch.equal(updated.perplexity, local[0]) and torch.equal(updated.codebook_usage, local[1])
    for key in ("embed", "cluster_size", "embed_avg", "code_usage", "restart_seed"):
        assert not torch.equal(before[key], quantizer.state_dict()[key]), key


@pytest.mark.parametrize(
    "overrides",
    [
        {"kmeans_init": True},
        {"kmeans_init": False},
        {"kmeans_init": False, "codebook_update": "loss", "use_l2_normalized_codes": True},
    ],
    ids=["ema-kmeans", "ema", "loss-l2"],
)
def test_training_steps_read_nothing_back_to_the_host(overrides):
    """After the first step (k-means), a training step never waits for a tensor's value: restarts run on
    fixed-size tensors and the scalar buffers are mirrored on the host."""
    latents, _ = clustered_latents()
    quantizer = clustered_quantizer(dead_code_threshold=1.0, **overrides).train()
    training_step(quantizer, latents)
    dead = int((quantizer.code_usage < 1.0).sum())
    embed = quantizer.embed.detach().clone()
    with HostReads() as reads:
        for _ in range(3):
            training_step(quantizer, latents)
    assert reads.reads == 0
    with HostReads() as control:
        assert int(quantizer.restart_seed) > 0  # the detector sees a read
    assert control.reads == 1
    assert not torch.equal(quantizer.embed, embed)
    if not overrides["kmeans_init"]:
        assert dead > 0  # the steps restarted codes (after k-means every code starts alive)


def test_host_mirror_follows_loaded_state():
    latents, _ = clustered_latents()
    trained = clustered_quantizer(dead_code_threshold=0.0).train()
    training_step(trained, latents)
    fresh = clustered_quantizer(dead_code_threshold=0.0).train()
    assert int(fresh.initialized) == 0
    fresh.initialize(latents[..., :64])  # k-means on other data; the mirror now says "done"
    fresh.load_state_dict(trained.state_dict())  # an in-place copy: trained and initialised
    before = state(fresh)
    fresh.initialize(latents)
    assert_same_state(before, state(fresh))  # no second k-means
    pending = clustered_quantizer(dead_code_threshold=0.0).state_dict()
    fresh.load_state_dict(pending)
    fresh.initialize(latents)
    assert int(fresh.initialized) == 1 and not torch.equal(fresh.embed, pending["embed"])
    # A buffer replaced by another tensor (as transformers' loader and `.to()` do) is read again too.
    fresh.initialized = torch.zeros((), dtype=torch.long)
    embed = fresh.embed.detach().clone()
    fresh.initialize(latents[..., ::2])
    assert int(fresh.initialized) == 1 and not torch.equal(fresh.embed, embed)


DISTRIBUTED_CHILD = """
import sys

import torch
import torch.distributed as dist

from vq_tokenizer import VQVAEConfig, VQVAEVectorQuantizer

rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
torch.manual_seed(0)  # the same initial codebook everywhere
config = VQVAEConfig(modality="audio", codebook_size=64, codebook_dim=4, kmeans_iters=3, **OVERRIDES)
quantizer = VQVAEVectorQuantizer(config).train()
generator = torch.Generator().manual_seed(100 + rank)  # each rank its own data
for step in range(6):
    latents = torch.randn(2, 4, 40 + 8 * rank, generator=generator) * (1 + 3 * (step % 2))
    quantizer.initialize(latents)
    output = quantizer.update(latents, quantizer.quantize(latents))
torch.save({"state": quantizer.state_dict(), "perplexity": output.perplexity}, out)
dist.destroy_process_group()
"""


@pytest.mark.parametrize(
    "overrides",
    ["{}", '{"codebook_update": "loss", "use_l2_normalized_codes": True, "codebook_lookup_dim": 2}'],
    ids=["ema", "loss-l2-lookup"],
)
def test_two_processes_keep_identical_codebooks(tmp_path, overrides):
    """k-means, EMA and restarts on different data per process, batches of different sizes: the same
    collectives on both (no hang), the same codebook and statistics."""
    first, second = run_two_ranks(tmp_path, DISTRIBUTED_CHILD.replace("OVERRIDES", overrides))
    assert_same_state(first["state"], second["state"])
    assert torch.equal(first["perplexity"], second["perplexity"])
    assert int(first["state"]["restart_seed"]) > 0


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
    # 4 MiB per worker, so one [512, 1024] distance block with any number of workers).
    small = peak_allocated_bytes(lambda: nearest_codes(vectors[:512], codebook[:1024], 1 << 22))
    assert small >= 512 * 1024 * 4

    chunk_size = 1 << 16
    peak = peak_allocated_bytes(lambda: nearest_codes(vectors, codebook, chunk_size))
    # One tile buffer, the [K, D + 1] codes with their squared norms, the [N] outputs (float32 + int64) and
    # per-tile temporaries, with a factor 2 of slack for the implementation. Measured: 473,504 bytes (bound
    # 983,040).
    bound = 2 * (chunk_size * 4 + num_codes * (8 + 1) * 4 + num_vectors * (4 + 8)) + (1 << 16)
    assert peak < bound, (peak, bound)
    assert peak < full_matrix / 50


# ------------------------------------------------------------------------------ threads and process state


class ThreadStarts:
    """Counts the threads started (through `threading`) while the block runs."""

    def __enter__(self):
        self.started = []

        def first_call(*args):  # runs once in each new thread, then profiling stops there
            self.started.append(threading.current_thread().name)
            sys.setprofile(None)

        threading.setprofile(first_call)
        return self

    def __exit__(self, *exc):
        threading.setprofile(None)


def search_inputs(num_vectors=4096, num_codes=512, dim=16):
    generator = torch.Generator().manual_seed(8)
    return torch.randn(num_vectors, dim, generator=generator), torch.randn(
        num_codes, dim, generator=generator
    )


def test_nearest_codes_starts_no_thread_and_leaves_torch_threads_alone():
    vectors, codebook = search_inputs()
    threads = torch.get_num_threads()
    with ThreadStarts() as starts:
        for _ in range(3):
            nearest_codes(vectors, codebook)
    assert starts.started == []
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_parallel_nearest_codes_gives_the_same_codes_with_one_pool_per_block(workers):
    vectors, codebook = search_inputs()
    vectors.requires_grad_()  # as in a training forward: workers start with grad mode on
    expected = nearest_codes(vectors, codebook)
    threads = torch.get_num_threads()
    before = threading.active_count()
    with ThreadStarts() as starts, parallel_nearest_codes(workers):
        for chunk_size in (1 << 22, 1 << 12, 1 << 22):
            codes, squared = nearest_codes(vectors, codebook, chunk_size)
            assert torch.equal(codes, expected[0])
            assert torch.allclose(squared, expected[1])
    if workers == 1:
        assert starts.started == []  # a single worker is never asked: the caller searches
    else:
        assert 1 <= len(starts.started) <= workers  # one pool for the three calls
    assert threading.active_count() == before  # the pool ends with its block
    assert torch.get_num_threads() == threads
    codes, _ = nearest_codes(vectors, codebook)  # outside the block: in the caller's thread again
    assert torch.equal(codes, expected[0])


def test_parallel_nearest_codes_refuses_bad_worker_counts():
    for workers in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            with parallel_nearest_codes(workers):
                pass


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
            codes = (training_step(quantizer, latents) if mode == "train" else quantizer(latents)).codes
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
