"""VQ-VAE tokenizer model (van den Oord et al. 2017, https://arxiv.org/abs/1711.00937).

Self-contained on purpose: it imports only torch, transformers (with safetensors, which transformers
requires) and the configuration, so that `register_for_auto_class` can ship it to the Hub and
`trust_remote_code=True` loads it where `vq_tokenizer` is not installed.
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
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, ModelOutput, has_file, logging

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


@dataclass
class VQVAEEncoderOutput(ModelOutput):
    """
    Output of [`VQVAEModel.encode`].

    Args:
        codes (`torch.LongTensor` of shape `[B, h, w]` (images) or `[B, t]` (audio)):
            The discrete tokens.
        latents (`torch.FloatTensor` of shape `[B, D, h, w]` or `[B, D, t]`):
            Encoder outputs before quantization (z_e).
        quantized (`torch.FloatTensor` of shape `[B, D, h, w]` or `[B, D, t]`):
            Codebook vectors of the codes (z_q).
    """

    codes: torch.LongTensor | None = None
    latents: torch.FloatTensor | None = None
    quantized: torch.FloatTensor | None = None


@dataclass
class VQVAEDecoderOutput(ModelOutput):
    """
    Output of [`VQVAEModel.decode`].

    Args:
        reconstruction (`torch.FloatTensor` of shape `[B, C, H, W]` or `[B, C, T]`):
            The decoded input, in the model's input scale (e.g. [-1, 1] for the default processor).
    """

    reconstruction: torch.FloatTensor | None = None


@dataclass
class VQVAEOutput(ModelOutput):
    """
    Output of [`VQVAEModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            reconstruction_loss + commitment_cost * commitment_loss + codebook_loss.
        reconstruction (`torch.FloatTensor` of shape `[B, C, H, W]` or `[B, C, T]`):
            Decoded input.
        codes (`torch.LongTensor` of shape `[B, h, w]` or `[B, t]`):
            The discrete tokens.
        reconstruction_loss (`torch.FloatTensor` of shape `()`):
            MSE or L1 to the input (plus the multi-resolution STFT loss for audio), padding excluded.
        commitment_loss (`torch.FloatTensor` of shape `()`):
            `||z_e - sg[e]||^2`, before the commitment cost.
        codebook_loss (`torch.FloatTensor` of shape `()`):
            `||sg[z_e] - e||^2` (zero with EMA updates).
        perplexity (`torch.FloatTensor` of shape `()`):
            exp(entropy) of the batch's code distribution.
        codebook_usage (`torch.FloatTensor` of shape `()`):
            Share of codes used in the batch.
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    codes: torch.LongTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
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
        """Uniform(-1/K, 1/K) codebook (the paper's init); statistics zeroed; k-means pending."""
        bound = 1.0 / self.codebook_size
        self.embed.uniform_(-bound, bound)
        if self.config.use_l2_normalized_codes:
            self.embed.copy_(l2norm(self.embed))
        self.embed_avg.copy_(self.embed)
        self.cluster_size.zero_()
        self.code_usage.zero_()
        self._set_host_scalar("initialized", 0)
        self._set_host_scalar("restart_seed", 0)

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


# ----------------------------------------------------------------------------------------------------------
# Encoder and decoder


def _conv(config: VQVAEConfig) -> type[nn.Module]:
    return getattr(nn, f"Conv{config.spatial_dims}d")


def _conv_transpose(config: VQVAEConfig) -> type[nn.Module]:
    return getattr(nn, f"ConvTranspose{config.spatial_dims}d")


class VQVAEResidualBlock(nn.Module):
    """ReLU, 3x3 conv, ReLU, 1x1 conv, added to the input."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        conv = _conv(config)
        self.conv1 = conv(config.hidden_size, config.residual_hidden_size, 3, padding=1)
        self.conv2 = conv(config.residual_hidden_size, config.hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.conv2(F.relu(self.conv1(F.relu(hidden))))


class VQVAEResidualStack(nn.Module):
    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.layers = nn.ModuleList([VQVAEResidualBlock(config) for _ in range(config.num_residual_layers)])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden)
        return F.relu(hidden)


def _stage_widths(config: VQVAEConfig) -> list[int]:
    """Widths after each strided stage: the last is hidden_size, earlier ones half of it."""
    stages = config.num_downsampling_layers
    return [max(1, config.hidden_size // 2)] * (stages - 1) + [config.hidden_size] if stages else []


class VQVAEEncoder(nn.Module):
    """Strided 4x4 convolutions (stride 2) to the downsampling factor, a 3x3 conv, residual blocks,
    then a 1x1 conv to the code dimension D."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        conv = _conv(config)
        widths = _stage_widths(config)
        self.downsample = nn.ModuleList()
        channels = config.in_channels
        for width in widths:
            self.downsample.append(conv(channels, width, 4, stride=2, padding=1))
            channels = width
        self.conv_in = conv(channels, config.hidden_size, 3, padding=1)
        self.residual = VQVAEResidualStack(config)
        self.conv_out = conv(config.hidden_size, config.codebook_dim, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = inputs
        for layer in self.downsample:
            hidden = F.relu(layer(hidden))
        return self.conv_out(self.residual(self.conv_in(hidden)))


class VQVAEDecoder(nn.Module):
    """Mirror of the encoder: 3x3 conv from D, residual blocks, transposed 4x4 convolutions (stride 2)."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        conv, conv_transpose = _conv(config), _conv_transpose(config)
        self.conv_in = conv(config.codebook_dim, config.hidden_size, 3, padding=1)
        self.residual = VQVAEResidualStack(config)
        stage_widths = _stage_widths(config)
        widths = list(reversed(stage_widths))[1:] + [config.in_channels] if stage_widths else []
        self.upsample = nn.ModuleList()
        channels = config.hidden_size
        for width in widths:
            self.upsample.append(conv_transpose(channels, width, 4, stride=2, padding=1))
            channels = width
        self.conv_out = conv(config.hidden_size, config.in_channels, 3, padding=1) if not widths else None

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        hidden = self.residual(self.conv_in(quantized))
        for index, layer in enumerate(self.upsample):
            hidden = layer(hidden)
            if index < len(self.upsample) - 1:
                hidden = F.relu(hidden)
        if self.conv_out is not None:
            hidden = self.conv_out(hidden)
        return hidden


# ----------------------------------------------------------------------------------------------------------
# Losses


def multi_resolution_stft_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, fft_sizes: list[int], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1, averaged over FFT sizes (Yamamoto et al. 2020).

    Both terms are taken over the whole batch (Frobenius norms and the mean over time-frequency bins). With
    `mask` (`[B, T]`, 1 = real sample) each item is cut to its real samples before its STFT, so padding adds
    no frames: an item alone and the same item padded in a batch give the same loss. An FFT size longer than
    an item is skipped for that item.
    """
    reconstruction, target = reconstruction.float(), target.float()
    if mask is None:
        groups = [(reconstruction, target)]
    else:
        # Items with the same number of real samples share one batched STFT (all of them, for training crops).
        keep = mask.bool()
        lengths = keep.sum(-1)
        groups = []
        for length in lengths.unique().tolist():
            if length == 0:
                continue
            items = (lengths == length).nonzero().flatten().tolist()
            groups.append(
                tuple(
                    torch.stack([signal[i][:, keep[i]] for i in items]) for signal in (reconstruction, target)
                )
            )
    total, used_sizes = reconstruction.new_zeros(()), 0
    for fft_size in fft_sizes:
        window = torch.hann_window(fft_size, device=target.device)
        diff_sq = target_sq = log_error = reconstruction.new_zeros(())
        bins = 0
        for group in groups:
            if group[1].shape[-1] < fft_size:
                continue
            spectra = [
                torch.stft(
                    signal.reshape(-1, signal.shape[-1]),
                    fft_size,
                    fft_size // 4,
                    window=window,
                    return_complex=True,
                )
                .abs()
                .clamp(min=1e-7)
                for signal in group
            ]
            diff_sq = diff_sq + (spectra[1] - spectra[0]).pow(2).sum()
            target_sq = target_sq + spectra[1].pow(2).sum()
            log_error = log_error + (spectra[0].log() - spectra[1].log()).abs().sum()
            bins += spectra[1].numel()
        if bins == 0:
            continue
        convergence = diff_sq.sqrt() / target_sq.sqrt().clamp(min=1e-7)
        total = total + convergence + log_error / bins
        used_sizes += 1
    return total / max(1, used_sizes)


# ----------------------------------------------------------------------------------------------------------
# Models


class VQVAEPreTrainedModel(PreTrainedModel):
    config_class = VQVAEConfig
    base_model_prefix = "vqvae"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = False
    _no_split_modules = ["VQVAEResidualBlock"]

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            # Audio stacks are deep (one strided layer per factor of two of the hop length) and speech is quiet
            # (RMS ~0.1). PyTorch's default init shrinks the signal ~0.4x per ReLU layer and its biases swamp
            # what is left, so every latent lands on one code and training stalls; He-normal weights and zero
            # biases carry the waveform's variation through the stack.
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            # Image stacks are shallow: PyTorch's default (Kaiming-uniform) init trains them well.
            module.reset_parameters()
        elif isinstance(module, VQVAEQuantizerBase):
            module.reset_parameters()


class VQVAEModel(VQVAEPreTrainedModel):
    """VQ-VAE tokenizer: `encode` inputs to codes, `decode` codes to inputs, `forward` for training.

    Images: `pixel_values` `[B, C, H, W]` -> codes `[B, H/f, W/f]`. Audio: `input_values` `[B, C, T]` ->
    codes `[B, T/hop]`. Sizes must be multiples of the downsampling factor (the processors pad).
    """

    def __init__(self, config: VQVAEConfig):
        super().__init__(config)
        self.main_input_name = config.main_input_name
        self.encoder = VQVAEEncoder(config)
        self.quantizer = VQVAEVectorQuantizer(config)
        self.decoder = VQVAEDecoder(config)
        self.post_init()

    # -- validation -------------------------------------------------------------------------------------
    def _check_inputs(self, inputs: torch.Tensor | None, name: str) -> torch.Tensor:
        config = self.config
        if inputs is None:
            raise ValueError(
                f"Pass `{config.main_input_name}` (a float tensor) to the {config.modality} model."
            )
        if not isinstance(inputs, torch.Tensor):
            raise ValueError(
                f"`{name}` must be a torch.Tensor, got {type(inputs).__name__}; use the processor."
            )
        if inputs.dim() != config.spatial_dims + 2:
            hint = (
                " (add a batch dimension with `.unsqueeze(0)`)"
                if inputs.dim() == config.spatial_dims + 1
                else ""
            )
            raise ValueError(
                f"`{name}` must have shape {config.input_layout}, got {tuple(inputs.shape)}{hint}."
            )
        if not inputs.is_floating_point():
            raise ValueError(
                f"`{name}` must be a float tensor, got {inputs.dtype}; scale integer data to floats first "
                "(the processor does this)."
            )
        if inputs.shape[0] == 0:
            raise ValueError(
                f"`{name}` is an empty batch (shape {tuple(inputs.shape)}); pass at least one item."
            )
        if inputs.shape[1] != config.in_channels:
            raise ValueError(
                f"`{name}` has {inputs.shape[1]} channels but the model expects in_channels={config.in_channels}; "
                "convert the input (the processor's `num_channels`) or use a model with matching channels."
            )
        factor = config.downsampling_factor
        sizes = tuple(inputs.shape[2:])
        if any(size == 0 or size % factor for size in sizes):
            raise ValueError(
                f"`{name}` has size {sizes}, which must be non-zero multiples of the downsampling factor "
                f"{factor}; pad it (the processor's `do_pad`) to {tuple(-(-max(s, 1) // factor) * factor for s in sizes)}."
            )
        if not torch.isfinite(inputs).all():
            raise ValueError(f"`{name}` contains NaN or inf values; clean the input before tokenizing it.")
        return inputs

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        config = self.config
        layout = config.codes_layout
        if not isinstance(codes, torch.Tensor):
            raise ValueError(f"`codes` must be a torch.LongTensor {layout}, got {type(codes).__name__}.")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"`codes` must be an integer tensor (torch.long), got {codes.dtype}.")
        if codes.dim() != config.spatial_dims + 1:
            raise ValueError(
                f"`codes` must have shape {layout} for a {config.modality} model, got {tuple(codes.shape)}."
            )
        if codes.numel() == 0:
            raise ValueError(f"`codes` is empty (shape {tuple(codes.shape)}).")
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= config.codebook_size:
            raise ValueError(
                f"`codes` must lie in [0, {config.codebook_size - 1}] (codebook_size={config.codebook_size}), "
                f"got values in [{low}, {high}]; were they produced by another tokenizer or offset for an LM?"
            )
        return codes.long()

    def _resolve_inputs(self, pixel_values, input_values, kwargs) -> torch.Tensor:
        """The one input tensor; the first positional argument serves both modalities."""
        kwargs.pop("original_sizes", None)  # the image processor's crop-back info, so `model(**inputs)` works
        if kwargs:
            raise TypeError(f"Unexpected arguments: {sorted(kwargs)}.")
        if pixel_values is not None and input_values is not None:
            raise ValueError("Pass one of `pixel_values` (images) or `input_values` (audio), not both.")
        inputs = input_values if input_values is not None else pixel_values
        return self._check_inputs(inputs, self.config.main_input_name)

    # -- public API -------------------------------------------------------------------------------------
    def encode(
        self,
        pixel_values: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VQVAEEncoderOutput | tuple:
        """Inputs to codes. Images: `pixel_values` `[B, C, H, W]` -> codes `[B, h, w]`; audio:
        `input_values` `[B, C, T]` -> codes `[B, t]`."""
        inputs = self._resolve_inputs(pixel_values, input_values, kwargs)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        latents = self.encoder(inputs)
        quantized = self.quantizer(latents)  # quantize(): changes nothing
        output = VQVAEEncoderOutput(codes=quantized.codes, latents=latents, quantized=quantized.quantized)
        return output if return_dict else output.to_tuple()

    def decode(self, codes: torch.Tensor, return_dict: bool | None = None) -> VQVAEDecoderOutput | tuple:
        """Codes `[B, h, w]` (images) or `[B, t]` (audio) to the reconstruction."""
        codes = self._check_codes(codes)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        reconstruction = self.decoder(self.quantizer.lookup(codes))
        output = VQVAEDecoderOutput(reconstruction=reconstruction)
        return output if return_dict else output.to_tuple()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VQVAEOutput | tuple:
        """Encode, quantize and decode; returns the training loss and its parts.

        `padding_mask` (`[B, T]`, audio only, 1 = real sample) excludes padding from the loss.
        """
        inputs = self._resolve_inputs(pixel_values, input_values, kwargs)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if padding_mask is not None:
            if self.config.modality != "audio":
                raise ValueError("`padding_mask` is for audio models; images are padded by the processor.")
            if padding_mask.shape != (inputs.shape[0], inputs.shape[-1]):
                raise ValueError(
                    f"`padding_mask` must have shape [B, T] = {(inputs.shape[0], inputs.shape[-1])}, "
                    f"got {tuple(padding_mask.shape)}."
                )
        latents = self.encoder(inputs)
        # Learning is explicit, in training only: encode() and eval-mode calls change no state.
        if self.training:
            self.quantizer.initialize(latents)  # k-means on the first batch
        quantized = self.quantizer(latents)  # quantize()
        if self.training:
            quantized = self.quantizer.update(latents, quantized)  # EMA, restarts; statistics of all ranks
        reconstruction = self.decoder(quantized.quantized)
        reconstruction_loss = self.reconstruction_loss(reconstruction, inputs, padding_mask)
        loss = (
            reconstruction_loss
            + self.config.commitment_cost * quantized.commitment_loss
            + quantized.codebook_loss
        )
        output = VQVAEOutput(
            loss=loss,
            reconstruction=reconstruction,
            codes=quantized.codes,
            reconstruction_loss=reconstruction_loss,
            commitment_loss=quantized.commitment_loss,
            codebook_loss=quantized.codebook_loss,
            perplexity=quantized.perplexity,
            codebook_usage=quantized.codebook_usage,
        )
        return output if return_dict else output.to_tuple()

    def reconstruction_loss(
        self, reconstruction: torch.Tensor, target: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MSE/L1 over real (unpadded) values, plus the multi-resolution STFT loss for audio."""
        reconstruction = reconstruction.float()
        target = target.float()
        error = (reconstruction - target).abs()
        error = error.pow(2) if self.config.reconstruction_loss == "mse" else error
        if padding_mask is not None:
            weights = padding_mask.to(error.dtype).unsqueeze(1).expand_as(error)
            loss = (error * weights).sum() / weights.sum().clamp(min=1)
        else:
            loss = error.mean()
        if self.config.modality == "audio" and self.config.stft_loss_weight > 0:
            loss = loss + self.config.stft_loss_weight * multi_resolution_stft_loss(
                reconstruction, target, self.config.stft_fft_sizes, padding_mask
            )
        return loss

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """[`PreTrainedModel.from_pretrained`], stricter: safetensors only, and weights must match the config.

        transformers would otherwise unpickle a `pytorch_model.bin` (code execution risk) and re-initialise
        missing or mis-shaped tensors with a warning; a tokenizer with a random codebook silently produces
        wrong codes, so both are refused, as is a truncated or corrupt weights file.
        """
        wants_info = kwargs.pop("output_loading_info", False)
        if kwargs.get("ignore_mismatched_sizes"):
            raise ValueError(
                "`ignore_mismatched_sizes=True` would re-initialise the codebook; it is not supported."
            )
        if kwargs.get("use_safetensors") is False:
            raise ValueError("VQVAEModel loads safetensors weights only; pickled `.bin` weights are refused.")
        kwargs["use_safetensors"] = True
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        try:
            # Mismatched shapes are reported in the loading info (below) instead of raised as text.
            model, info = super().from_pretrained(
                *args, output_loading_info=True, **{**kwargs, "ignore_mismatched_sizes": True}
            )
        except SafetensorError as error:
            raise ValueError(
                f"The weights file of {source} is truncated or corrupt ({error}). Download it again "
                "(`force_download=True`) or save the model again."
            ) from error
        except OSError as error:
            if _has_safetensors_weights(source, kwargs):
                raise  # the weights are there: another problem (network, access, a missing shard)
            raise OSError(
                f"{source} has no model.safetensors. VQVAEModel loads safetensors only and never unpickles "
                "`.bin` files; convert trusted weights with `model.save_pretrained(dir)` (safetensors is the "
                "default)."
            ) from error
        problems = {key: info.get(key) for key in ("missing_keys", "mismatched_keys", "unexpected_keys")}
        problems = {key: sorted(value) for key, value in problems.items() if value}
        if problems:
            raise ValueError(
                f"The checkpoint's tensors do not match this VQVAEConfig ({problems}): it was saved with another "
                "codebook_size, codebook_dim or width. Load it with the config saved beside it."
            )
        return (model, info) if wants_info else model


def _has_safetensors_weights(source, kwargs: dict) -> bool:
    """Whether `source` (a folder or a Hub repo, at `kwargs`' revision and subfolder) holds safetensors weights,
    single-file or sharded. Asked only after a load failed: if the repo itself cannot be reached, the answer is
    yes, so that the load's own error stands."""
    subfolder = kwargs.get("subfolder") or ""
    hub_options = {
        key: kwargs.get(key) for key in ("revision", "proxies", "token", "cache_dir") if kwargs.get(key)
    }
    try:
        return any(
            has_file(
                source,
                f"{subfolder}/{name}" if subfolder else name,
                local_files_only=bool(kwargs.get("local_files_only")),
                **hub_options,
            )
            for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)
        )
    except Exception:  # noqa: BLE001 - no repo, no access, no network: not a question of the file
        return True


__all__ = [
    "VQVAEModel",
    "VQVAEPreTrainedModel",
    "VQVAEQuantizerBase",
    "VQVAEVectorQuantizer",
    "VQVAEOutput",
    "VQVAEEncoderOutput",
    "VQVAEDecoderOutput",
    "VQVAEQuantizerOutput",
    "nearest_codes",
    "parallel_nearest_codes",
]
