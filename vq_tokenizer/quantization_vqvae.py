"""The quantizers of the VQ-VAE: latents -> codes and back, and how codebooks learn.

[`VQVAEQuantizerBase`] is the interface [`VQVAEModel`] asks of a quantizer: `quantize` and `lookup` are pure
(no buffer or parameter changes, no collectives); `initialize` (before the first training `quantize`) and
`update` (after it) are the learning path, called only by the model's training forward, with the same
collectives on every rank. Also here: the exact fp32 nearest-code search (`nearest_codes`, opt-in
`parallel_nearest_codes`) and the distributed helpers.

Self-contained like `modeling_vqvae.py`, which imports it: torch, transformers and the configuration only, so
both ship to the Hub for `trust_remote_code`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_vqvae import VQVAEConfig

logger = logging.get_logger(__name__)

# Decay of the per-code use average that finds dead codes: a window of ~10 steps, so codes stranded by a
# fast-moving encoder early in training are restarted within a few steps instead of ~200 (at the codebook's
# 0.99), which is when plain EMA VQ collapses.
USAGE_DECAY = 0.9


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def l2norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return F.normalize(x, p=2, dim=dim)


def channels_last_flat(x: torch.Tensor) -> torch.Tensor:
    """`[B, D, *spatial]` -> `[B * prod(spatial), D]`."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def distributed_world_size() -> int:
    """Processes that share the codebook (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place. Every rank must call it at the same point (it is a collective)."""
    if distributed_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally-shaped tensors from all processes along dim 0 (a collective)."""
    world_size = distributed_world_size()
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def code_counts(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Uses of each code in `codes` (any shape) -> float32 `[K]`, without a host sync on any device
    (`bincount` reads its input's maximum back to the host on GPUs)."""
    codes = codes.reshape(-1)
    if codes.device.type == "cpu":
        return torch.bincount(codes, minlength=num_codes).float()
    ones = torch.ones(codes.shape, dtype=torch.float32, device=codes.device)
    return torch.zeros(num_codes, device=codes.device).index_add_(0, codes, ones)


def cluster_sums(vectors: torch.Tensor, codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Sum of the rows of `vectors` `[N, D]` assigned to each code -> `[K, D]`.

    On CPU a sparse one-hot `[K, N]` times `vectors`: ~100x faster than `index_add_`, whose duplicate
    indices serialise there, and unlike a dense one-hot it needs no N x K memory. Elsewhere `index_add_`.
    """
    if vectors.device.type != "cpu":
        return vectors.new_zeros(num_codes, vectors.shape[1]).index_add_(0, codes, vectors)
    positions = torch.arange(codes.shape[0], device=codes.device)
    one_hot = torch.sparse_coo_tensor(
        torch.stack([codes, positions]),
        torch.ones(codes.shape[0], dtype=vectors.dtype, device=vectors.device),
        (num_codes, codes.shape[0]),
        check_invariants=False,  # indices are in range by construction
    )
    return torch.sparse.mm(one_hot, vectors)


def _version(tensor: torch.Tensor) -> int:
    """The tensor's in-place write counter (inference tensors have none: -1)."""
    return -1 if tensor.is_inference() else tensor._version


def code_statistics(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(perplexity, usage)` of a batch from its code counts `[K]`: exp(entropy) of the code distribution,
    and the share of codes used at least once."""
    probs = counts / counts.sum().clamp(min=1)
    perplexity = torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum())
    return perplexity, (counts > 0).float().mean()


# ----------------------------------------------------------------------------------------------------------
# Nearest-code search
#
# On CPU: tiles of the distance matrix sized for the cache, the code norms folded into the GEMM, and a
# two-step argmin. 2048 codes x 512 rows (4 MiB of fp32 distances) per tile: on a 2-core AVX-512 Xeon (2 MiB L2
# per core) 10% faster than 2 MiB tiles, on a 2-core AMD EPYC (512 KiB L2) within noise of them; see
# benchmarks/README.md.
_CPU_TILE_CODES = 2048
_CPU_TILE_ENTRIES = 1 << 20
_ARGMIN_GROUP = 64
# The pool of the row-parallel search while a `parallel_nearest_codes` block is open in this context.
_SEARCH_POOL: contextvars.ContextVar[tuple[concurrent.futures.ThreadPoolExecutor, int] | None] = (
    contextvars.ContextVar("vq_tokenizer_nearest_codes_pool", default=None)
)


@contextlib.contextmanager
def parallel_nearest_codes(workers: int) -> Iterator[None]:
    """Opt in to the row-parallel nearest-code search on CPU for every [`nearest_codes`] call made in this
    block by this thread (`model.encode`, the training forward, k-means init).

    Each call splits its rows into `workers` ranges, searched at once by the threads of one pool that lives as
    long as the block (no thread is started per call). Worth it where torch's own intra-op threads are not: its
    threads synchronise at every op, and the search runs thousands of small ops; on a busy machine each of those
    waits costs milliseconds, while independent row ranges need none (measurements in benchmarks/README.md).

    The caller owns torch's thread count. Each worker runs torch ops with the count last set by
    `torch.set_num_threads` when the worker starts, so set it to 1 first, or every worker splits its ops again
    and the cores are oversubscribed. The block itself changes no process-wide state.

    ```python
    torch.set_num_threads(1)  # the script's choice, for the whole process
    with parallel_nearest_codes(os.cpu_count()):
        codes = model.encode(pixel_values).codes
    ```
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"`workers` must be an int >= 1, got {workers!r}.")
    if workers > 1 and torch.get_num_threads() > 1:
        logger.warning_once(
            f"parallel_nearest_codes({workers}) with torch.get_num_threads() = {torch.get_num_threads()}: each "
            "worker splits its ops again. Call torch.set_num_threads(1) before opening the block."
        )
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="nearest_codes") as pool:
        token = _SEARCH_POOL.set((pool, workers))
        try:
            yield
        finally:
            _SEARCH_POOL.reset(token)


def _tile_argmin(
    distances: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    group_minima: torch.Tensor,
    row_offsets: torch.Tensor,
) -> None:
    """`distances.min(dim=1)` of a `[n, k]` tile into `values`, `indices` (`[n]` each), with the same
    values and the same (first) indices.

    On CPU `min(dim=1)` with indices runs ~5-20x slower than the vectorised `amin`; at K = 512 it took as long
    as the GEMM. So: `amin` over groups of 64 consecutive codes, the first group holding the row minimum (an
    indexed min over k / 64 entries), then the first minimum inside that group (over 64). `row_offsets` is
    `arange(>= n)`.
    """
    n, k = distances.shape
    groups = k // _ARGMIN_GROUP
    if groups < 2 or k != groups * _ARGMIN_GROUP:
        torch.min(distances, dim=1, out=(values, indices))
        return
    minima = group_minima[: n * groups].view(n, groups)
    torch.amin(distances.view(n, groups, _ARGMIN_GROUP), dim=2, out=minima)
    torch.min(minima, dim=1, out=(values, indices))
    winner_rows = torch.add(indices, row_offsets[:n], alpha=groups)  # row i's group j is row i * groups + j
    winners = distances.view(n * groups, _ARGMIN_GROUP).index_select(0, winner_rows)
    # min(dim=1).indices: the same first index as argmin, in half its time on CPU.
    torch.add(torch.min(winners, dim=1).indices, indices, alpha=_ARGMIN_GROUP, out=indices)


def _tile_workspace(
    vectors: torch.Tensor, rows_per_tile: int, codes_per_tile: int
) -> tuple[torch.Tensor, ...]:
    """The buffers of one search loop: rows with a ones column, distances, group minima, row offsets, tile
    minima and their codes."""
    rows = vectors.new_empty(rows_per_tile, vectors.shape[1] + 1)
    rows[:, -1] = 1.0
    return (
        rows,
        vectors.new_empty(rows_per_tile * codes_per_tile),
        vectors.new_empty(rows_per_tile * max(1, codes_per_tile // _ARGMIN_GROUP)),
        torch.arange(rows_per_tile, device=vectors.device),
        vectors.new_empty(rows_per_tile),
        torch.empty(rows_per_tile, dtype=torch.long, device=vectors.device),
    )


def _nearest_codes_in_tiles(
    vectors: torch.Tensor,
    code_tiles: list[tuple[int, torch.Tensor]],
    best_code: torch.Tensor,
    best_dist: torch.Tensor,
    workspace: tuple[torch.Tensor, ...],
) -> None:
    """The search for float32 `vectors` `[n, D]` into `best_code`, `best_dist` (`[n]`): `[rows, codes]` tiles
    of distances, one `(start, [-2 e, ||e||^2] as [D + 1, k])` entry of `code_tiles` at a time, all in the
    `workspace` buffers (the loop allocates only `[rows]`-sized temporaries)."""
    row_buffer, buffer, group_minima, row_offsets, tile_best, tile_code = workspace
    rows_per_tile, dim = row_buffer.shape[0], vectors.shape[1]
    on_cpu = vectors.device.type == "cpu"
    for row in range(0, vectors.shape[0], rows_per_tile):
        rows = vectors[row : row + rows_per_tile]
        n = rows.shape[0]
        row_buffer[:n, :dim].copy_(rows)
        rows_with_one = row_buffer[:n]
        row_best, row_code = best_dist[row : row + n], best_code[row : row + n]
        values, indices = tile_best[:n], tile_code[:n]
        for start, codes_t in code_tiles:
            # [z, 1] . [-2 e, ||e||^2] = ||e||^2 - 2 z.e: ||z - e||^2 without the ||z||^2 that all codes share.
            dists = buffer[: n * codes_t.shape[1]].view(n, codes_t.shape[1])
            torch.mm(rows_with_one, codes_t, out=dists)
            if on_cpu:
                _tile_argmin(dists, values, indices, group_minima, row_offsets)
            else:
                torch.min(dists, dim=1, out=(values, indices))
            if start == 0:
                row_best.copy_(values)
                row_code.copy_(indices)
            else:
                better = values < row_best  # strict: on a tie the earlier (lower) code stays
                torch.where(better, values, row_best, out=row_best)
                torch.where(better, indices + start, row_code, out=row_code)
        row_best.add_(rows.pow(2).sum(1))


@torch.no_grad()
def nearest_codes(
    vectors: torch.Tensor, codebook: torch.Tensor, chunk_size: int = 1 << 22
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest codebook vector (squared L2) for each row of `vectors`.

    Args:
        vectors: `[N, D]`.
        codebook: `[K, D]`.
        chunk_size: most distance entries held at once; the search walks `[rows, codes]` tiles of at most
            this many entries (over all workers) through preallocated buffers, so its extra memory does not
            grow with N x K. On CPU the tiles are smaller still (cache-sized, 4 MiB), which is also faster.

    Returns:
        `(codes [N] int64, squared_distances [N] float32)`. Computed in float32 whatever the input dtype
        or autocast state; among equal float32 distances the lowest code wins.

    The search runs in the caller's thread, with torch's own intra-op threads; it changes no process-wide
    state and starts no thread. Inside a [`parallel_nearest_codes`] block (an explicit opt-in) a CPU search
    splits its rows among that block's worker threads instead.
    """
    device_type = vectors.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        vectors = vectors.detach().float()
        codebook = codebook.detach().float()
        (num_vectors, dim), num_codes = vectors.shape, codebook.shape[0]
        # One GEMM of [z, 1] with [-2 e, ||e||^2] gives ||e||^2 - 2 z.e: on CPU ~20% faster than `addmm`'s
        # separate pass for the ||e||^2 bias.
        codes_t = codebook.new_empty(num_codes, dim + 1)
        torch.mul(codebook, -2.0, out=codes_t[:, :dim])
        torch.sum(codebook.pow(2), dim=1, out=codes_t[:, dim])
        codes_t = codes_t.t()
        pool = _SEARCH_POOL.get() if device_type == "cpu" else None
        workers = pool[1] if pool is not None else 1
        if device_type == "cpu":
            tile_entries = max(1, min(chunk_size // workers, _CPU_TILE_ENTRIES))
            codes_per_tile = min(num_codes, _CPU_TILE_CODES, tile_entries)
            if codes_per_tile >= 2 * _ARGMIN_GROUP:
                codes_per_tile -= codes_per_tile % _ARGMIN_GROUP
        else:
            tile_entries, codes_per_tile = chunk_size, min(num_codes, chunk_size)
        rows_per_tile = max(1, min(num_vectors, tile_entries // codes_per_tile))
        parts = max(1, min(workers, num_vectors // rows_per_tile))
        code_tiles = [
            (start, codes_t[:, start : start + codes_per_tile])
            for start in range(0, num_codes, codes_per_tile)
        ]
        best_dist = vectors.new_empty(num_vectors)
        best_code = torch.empty(num_vectors, dtype=torch.long, device=vectors.device)
        # Buffers are allocated here, in the caller's thread, where memory profilers look for them.
        workspaces = [_tile_workspace(vectors, rows_per_tile, codes_per_tile) for _ in range(parts)]
        bounds = [num_vectors * part // parts for part in range(parts + 1)]

        def search(part: int) -> None:
            rows = slice(bounds[part], bounds[part + 1])
            with torch.no_grad():  # grad mode is per thread; a worker starts with it on
                _nearest_codes_in_tiles(
                    vectors[rows], code_tiles, best_code[rows], best_dist[rows], workspaces[part]
                )

        if parts == 1:
            search(0)
        else:
            list(pool[0].map(search, range(parts)))  # list() re-raises a worker's exception
    return best_code, best_dist


# ----------------------------------------------------------------------------------------------------------
# Outputs


@dataclass
class VQVAEQuantizerOutput(ModelOutput):
    """
    Output of [`VQVAEVectorQuantizer`].

    Args:
        quantized (`torch.FloatTensor` of shape `[B, D, *spatial]`):
            Codebook vectors of the nearest codes, with straight-through gradients to the input.
        codes (`torch.LongTensor` of shape `[B, *spatial]`):
            Index of the nearest codebook vector at each position.
        commitment_loss (`torch.FloatTensor` of shape `()`):
            `||z_e - sg[e]||^2` (mean), not yet multiplied by the commitment cost.
        codebook_loss (`torch.FloatTensor` of shape `()`):
            `||sg[z_e] - e||^2` (mean) with `codebook_update="loss"`; zero with EMA updates.
        perplexity (`torch.FloatTensor` of shape `()`):
            exp(entropy) of the batch's code distribution (over all processes in training).
        codebook_usage (`torch.FloatTensor` of shape `()`):
            Share of the K codes used at least once in the batch.
    """

    quantized: torch.FloatTensor | None = None
    codes: torch.LongTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    codebook_usage: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------
# Quantizers


class VQVAEQuantizerBase(nn.Module):
    """What [`VQVAEModel`] asks of a quantizer: latents `[B, D, *spatial]` in, codes `[B, *spatial]` out.

    The lookup path, pure in every mode (it changes no parameter or buffer and runs no collective):

    - `quantize(latents)` -> [`VQVAEQuantizerOutput`]: codes, straight-through quantized latents, losses and
      the batch's statistics. `forward` is `quantize` (the model calls the module, so its hooks fire).
    - `lookup(codes)` -> the quantized latents `[B, D, *spatial]` of `codes`.

    The learning path, which [`VQVAEModel.forward`] calls in training only, on every process, in this order:

    - `initialize(latents)` before `quantize`: state learnt from the batch before its first lookup (k-means).
    - `update(latents, output)` after `quantize`: state learnt from the batch and its codes (EMA statistics,
      restarts). Returns `output` with its statistics taken over all processes.

    Both run the same collectives on every process. A quantizer without learnt state keeps the defaults.
    """

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config

    def reset_parameters(self) -> None:
        """The initial values of the quantizer's own parameters and buffers."""

    def quantize(self, latents: torch.Tensor) -> VQVAEQuantizerOutput:
        raise NotImplementedError

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def initialize(self, latents: torch.Tensor) -> None:
        """Learn what must precede the first training lookup. Default: nothing."""

    def update(self, latents: torch.Tensor, output: VQVAEQuantizerOutput) -> VQVAEQuantizerOutput:
        """Learn from a training batch and its `quantize` output. Default: nothing; returns `output`."""
        return output

    def forward(self, latents: torch.Tensor) -> VQVAEQuantizerOutput:
        return self.quantize(latents)

    def _check_latents(self, latents: torch.Tensor) -> None:
        dim = self.config.codebook_dim
        if latents.dim() < 3 or latents.shape[1] != dim:
            raise ValueError(
                f"{type(self).__name__} expects latents of shape [B, {dim}, *spatial], got {tuple(latents.shape)}."
            )


class VQVAEVectorQuantizer(VQVAEQuantizerBase):
    """Nearest-neighbour vector quantizer with straight-through gradients.

    Input latents `[B, D, *spatial]`; output [`VQVAEQuantizerOutput`] with `quantized` of the same shape
    and `codes` `[B, *spatial]` (int64).

    The codebook learns by EMA (default; paper appendix A.1, Laplace-smoothed counts) or by the codebook
    loss. Usage tricks, all optional: k-means initialisation on the first training batch (`initialize`),
    restart of dead codes from recent encoder outputs (`update`), l2-normalised codes and a low-dimensional
    lookup space (Yu et al. 2021, https://arxiv.org/abs/2110.04627).

    Distributed training: the EMA statistics and usage counts are all-reduced, and k-means candidates and
    restart candidates are all-gathered and chosen with a generator seeded identically on every rank, so
    every process holds the same codebook. `initialize` and `update` run the same collectives on every rank:
    their only branches depend on the config and on state that is already identical across ranks. Neither
    reads a tensor back to the host in a training step: the restarts run every step on fixed-size tensors,
    and the two scalar buffers are mirrored on the host (re-read only after a load or a move).
    """

    def __init__(self, config: VQVAEConfig):
        super().__init__(config)
        self.codebook_size = config.codebook_size
        self.codebook_dim = config.codebook_dim
        self.lookup_dim = config.lookup_dim
        self.use_ema = config.codebook_update == "ema"
        if config.codebook_lookup_dim is not None:
            self.in_proj = nn.Linear(config.codebook_dim, config.lookup_dim)
            self.out_proj = nn.Linear(config.lookup_dim, config.codebook_dim)
        else:
            self.in_proj = self.out_proj = None
        self.embed = nn.Parameter(
            torch.empty(config.codebook_size, config.lookup_dim), requires_grad=not self.use_ema
        )
        self.register_buffer("cluster_size", torch.zeros(config.codebook_size))
        self.register_buffer("embed_avg", torch.zeros(config.codebook_size, config.lookup_dim))
        self.register_buffer("code_usage", torch.zeros(config.codebook_size))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.long))
        self.register_buffer("restart_seed", torch.zeros((), dtype=torch.long))
        self._host_scalars: dict[str, tuple[torch.Tensor, int, int]] = {}
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Uniform(-1/K, 1/K) codebook (the paper's init); statistics zeroed; k-means pending.

        Through transformers' `initialization` helpers, as `_init_weights` needs: tensors loaded from a
        checkpoint are left alone, and no tensor is copied from another (either may be on the meta device, as
        with `device_map` and disk offload). The buffers get fixed values, the same whichever device the model
        was built on: `embed_avg` is zero until the first EMA update starts it from the codebook.
        """
        bound = 1.0 / self.codebook_size
        init.uniform_(self.embed, -bound, bound)
        if self.config.use_l2_normalized_codes:
            init.copy_(self.embed, l2norm(self.embed))
        for buffer in (
            self.embed_avg,
            self.cluster_size,
            self.code_usage,
            self.initialized,
            self.restart_seed,
        ):
            init.zeros_(buffer)
        self._host_scalars.clear()  # read `initialized` and `restart_seed` again

    @property
    def codebook(self) -> torch.Tensor:
        """The code vectors in the model's latent space, `[K, D]`."""
        embed = self.embed
        return self.out_proj(embed) if self.out_proj is not None else embed

    # -- lookup path: changes nothing -------------------------------------------------------------------
    def _lookup_space(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents `[B, D, *spatial]` -> the vectors the nearest code is searched for, `[N, lookup_dim]`."""
        flat = channels_last_flat(latents)
        if self.in_proj is not None:
            flat = self.in_proj(flat)
        if self.config.use_l2_normalized_codes:
            flat = l2norm(flat)
        return flat

    def quantize(self, latents: torch.Tensor) -> VQVAEQuantizerOutput:
        self._check_latents(latents)
        batch, _, *spatial = latents.shape
        flat = self._lookup_space(latents)
        codes, _ = nearest_codes(flat, self.embed, self.config.distance_chunk_size)
        selected = F.embedding(codes, self.embed).to(flat.dtype)
        commitment_loss = F.mse_loss(flat, selected.detach())
        codebook_loss = flat.new_zeros(()) if self.use_ema else F.mse_loss(selected, flat.detach())
        # The straight-through estimator where gradients flow; without them, the code vectors as they are.
        quantized = flat + (selected - flat).detach() if flat.requires_grad else selected
        if self.out_proj is not None:
            quantized = self.out_proj(quantized)
        perplexity, usage = code_statistics(code_counts(codes, self.codebook_size))
        return VQVAEQuantizerOutput(
            quantized=quantized.reshape(batch, *spatial, self.codebook_dim).movedim(-1, 1),
            codes=codes.reshape(batch, *spatial),
            commitment_loss=commitment_loss,
            codebook_loss=codebook_loss,
            perplexity=perplexity,
            codebook_usage=usage,
        )

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors for `codes` `[B, *spatial]` -> `[B, D, *spatial]`."""
        vectors = F.embedding(codes, self.embed)
        if self.out_proj is not None:
            vectors = self.out_proj(vectors)
        return vectors.movedim(-1, 1)

    # -- learning path: training only, the same collectives on every rank --------------------------------
    @torch.no_grad()
    def initialize(self, latents: torch.Tensor) -> None:
        """k-means init of the codebook on the first training batch (when `kmeans_init`); then a no-op."""
        if self.config.kmeans_init and not self._host_scalar("initialized"):
            self._kmeans_init(self._lookup_space(latents).float())

    @torch.no_grad()
    def update(self, latents: torch.Tensor, output: VQVAEQuantizerOutput) -> VQVAEQuantizerOutput:
        """Usage statistics, EMA codebook update, dead-code restarts; `output`'s perplexity and usage become
        those of all processes' batches."""
        flat = self._lookup_space(latents).float()
        codes = output.codes.reshape(-1)
        counts = all_reduce_sum(code_counts(codes, self.codebook_size))
        self.code_usage.mul_(USAGE_DECAY).add_(counts, alpha=1 - USAGE_DECAY)
        if self.use_ema:
            self._ema_update(flat, codes, counts)
        if self.config.dead_code_threshold > 0:
            self._restart_dead_codes(flat)
        output.perplexity, output.codebook_usage = code_statistics(counts)
        return output

    def _host_scalar(self, name: str) -> int:
        """The value of scalar buffer `name`, read back from its device only when the buffer changed since the
        last read: another tensor (a load, `.to()`) or an in-place write (`load_state_dict`) outside
        `_set_host_scalar`."""
        buffer = getattr(self, name)
        mirror = self._host_scalars.get(name)
        if mirror is None or mirror[0] is not buffer or mirror[1] != _version(buffer):
            mirror = (buffer, _version(buffer), int(buffer))
            self._host_scalars[name] = mirror
        return mirror[2]

    def _set_host_scalar(self, name: str, value: int) -> None:
        buffer = getattr(self, name)
        buffer.fill_(value)
        self._host_scalars[name] = (buffer, _version(buffer), value)

    def _generator(self, device: torch.device, rank: int | None = None) -> torch.Generator:
        """A generator seeded from the `restart_seed` buffer: none of the quantizer's random choices touch
        the global RNG, so they replay exactly after a resume (data loaders draw from the global RNG).

        `rank=None`: the same seed on every process (restart_seed is identical everywhere), for choices all
        ranks must agree on; it then advances the seed. With a rank: a per-process stream for local picks.
        """
        seed = self._host_scalar("restart_seed")
        if rank is None:
            self._set_host_scalar("restart_seed", seed + 1)
        generator = torch.Generator(device=device)
        generator.manual_seed(seed * 1000003 + 17 + (0 if rank is None else 7919 * (rank + 1)))
        return generator

    def _candidates(self, flat: torch.Tensor, count: int) -> torch.Tensor:
        """`count` random rows of every process's batch, shuffled alike on every process: `[>= count, d]` (a
        collective)."""
        rank = dist.get_rank() if distributed_world_size() > 1 else 0
        local = torch.randint(
            0, flat.shape[0], (count,), device=flat.device, generator=self._generator(flat.device, rank)
        )
        pool = all_gather_cat(flat[local])
        return pool[torch.randperm(pool.shape[0], generator=self._generator(pool.device), device=pool.device)]

    def _kmeans_init(self, flat: torch.Tensor) -> None:
        """Distributed Lloyd k-means over the first batch of every process (sums all-reduced)."""
        centers = self._candidates(flat, self.codebook_size)[: self.codebook_size].clone()
        if self.config.use_l2_normalized_codes:
            centers = l2norm(centers)
        for _ in range(self.config.kmeans_iters):
            codes, _ = nearest_codes(flat, centers, self.config.distance_chunk_size)
            sums = all_reduce_sum(cluster_sums(flat, codes, self.codebook_size))
            counts = all_reduce_sum(code_counts(codes, self.codebook_size))
            updated = sums / counts.clamp(min=1).unsqueeze(1)
            if self.config.use_l2_normalized_codes:
                updated = l2norm(updated)
            centers = torch.where((counts > 0).unsqueeze(1), updated, centers)
        # Start every code at the mean use of the batch (all processes' rows, which may differ in number), so no
        # code counts as dead before it is tried.
        mean_use = all_reduce_sum(flat.new_tensor(float(flat.shape[0]))) / self.codebook_size
        self.embed.data.copy_(centers)
        self.embed_avg.copy_(centers * mean_use)
        self.cluster_size.fill_(mean_use)
        self.code_usage.fill_(mean_use)
        self._set_host_scalar("initialized", 1)

    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        sums = all_reduce_sum(cluster_sums(flat, codes, self.codebook_size))
        # Statistics without counts yet (no k-means, first step) start from the codebook itself, as the paper's
        # EMA does; `reset_parameters` leaves `embed_avg` at zero (no copy at init). No host sync.
        fresh = self.cluster_size.sum() == 0
        self.embed_avg.copy_(torch.where(fresh, self.embed, self.embed_avg))
        decay = self.config.ema_decay
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        self.embed_avg.mul_(decay).add_(sums, alpha=1 - decay)
        total = self.cluster_size.sum()
        eps = self.config.ema_epsilon
        smoothed = (self.cluster_size + eps) / (total + self.codebook_size * eps) * total
        embed = self.embed_avg / smoothed.unsqueeze(1)
        self.embed.data.copy_(l2norm(embed) if self.config.use_l2_normalized_codes else embed)

    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        """Codes whose moving-average use fell below `dead_code_threshold` take a random recent encoder output.

        Every step, whatever the number of dead codes: one candidate per code from all processes' batches,
        kept where the code is dead (`torch.where`), so no count is read back to the host and every rank runs
        the same collective.
        """
        dead = (self.code_usage < self.config.dead_code_threshold).unsqueeze(1)  # identical on every rank
        count = -(-self.codebook_size // distributed_world_size())
        picked = self._candidates(flat, count)[: self.codebook_size]
        if self.config.use_l2_normalized_codes:
            picked = l2norm(picked)
        mean_use = self.code_usage.mean()
        self.embed.data.copy_(torch.where(dead, picked, self.embed))
        self.embed_avg.copy_(torch.where(dead, picked * mean_use, self.embed_avg))
        self.cluster_size.copy_(torch.where(dead[:, 0], mean_use, self.cluster_size))
        self.code_usage.copy_(torch.where(dead[:, 0], mean_use, self.code_usage))
