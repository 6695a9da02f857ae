"""The quantizers of the VQ-VAE: latents -> codes and back, and how codebooks learn.

[`VQVAEQuantizerBase`] is the interface [`VQVAEModel`] asks of a quantizer: `quantize` and `lookup` are pure
(no buffer or parameter changes, no collectives); `initialize` (before the first training `quantize`) and
`update` (after it) are the learning path, called only by the model's training forward, with the same
collectives on every rank. [`build_quantizer`] makes the one `config.quantizer_type` asks for:

- `"vq"`: [`VQVAEVectorQuantizer`], the paper's nearest-neighbour codebook (EMA, k-means, restarts);
- `"gumbel"`: [`VQVAEGumbelQuantizer`], logits relaxed by Gumbel-softmax (DALL-E's dVAE);
- `"rvq"`: [`VQVAEResidualVectorQuantizer`], a stack of `"vq"` codebooks on residuals (SoundStream, EnCodec);
- `"fsq"`: [`VQVAEFiniteScalarQuantizer`], a few bounded dimensions rounded to fixed levels.

Also here: the exact fp32 nearest-code search (`nearest_codes`, opt-in `parallel_nearest_codes`) and the
distributed helpers.

Self-contained like `modeling_vqvae.py`, which imports it: torch, transformers and the configuration only, so
both ship to the Hub for `trust_remote_code`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import math
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
    # bincount's output size depends on the data, index_add's does not: the latter while exporting.
    if codes.device.type == "cpu" and not torch.compiler.is_exporting():
        return torch.bincount(codes, minlength=num_codes).float()
    ones = torch.ones(codes.shape, dtype=torch.float32, device=codes.device)
    return torch.zeros(num_codes, device=codes.device).index_add_(0, codes, ones)


def real_codes(codes: torch.Tensor, real: torch.Tensor | None, num_codes: int) -> tuple[torch.Tensor, int]:
    """`(codes, bins)` for counting only real positions: with `real` (`[N]`, 1 = real, 0 = padding) the padding
    positions' codes become `num_codes`, an extra bin that counts and sums then drop (no host sync)."""
    if real is None:
        return codes.reshape(-1), num_codes
    return torch.where(real.reshape(-1) > 0, codes.reshape(-1), num_codes), num_codes + 1


def masked_code_counts(codes: torch.Tensor, num_codes: int, real: torch.Tensor | None = None) -> torch.Tensor:
    """`code_counts` of the real positions only (`real` `[N]`, 1 = real; None: all)."""
    codes, bins = real_codes(codes, real, num_codes)
    return code_counts(codes, bins)[:num_codes]


def real_rows(mask: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    """A code-grid mask (`[B, *spatial]`, True = real position, e.g. audio frames that hold real samples) as
    float32 weights `[N]` in the flat (channels-last) order of the latents; None stays None."""
    if mask is None:
        return None
    if mask.numel() != rows:
        raise ValueError(f"The quantizer's mask has {mask.numel()} positions but the latents have {rows}.")
    return mask.reshape(-1).float()


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


def distributed_rank() -> int:
    """This process's rank among those that share the codebook (0 without torch.distributed)."""
    return dist.get_rank() if distributed_world_size() > 1 else 0


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


def _nearest_codes_traceable(
    vectors: torch.Tensor, codebook: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[`nearest_codes`] as one GEMM and an argmin, for `torch.export`: no tiles, buffers or threads, whose
    sizes depend on the shapes. The same float32 products and the same tie rule (the lowest code wins)."""
    with torch.autocast(device_type=vectors.device.type, enabled=False):
        vectors, codebook = vectors.detach().float(), codebook.detach().float()
        codes_t = torch.cat([codebook * -2.0, codebook.pow(2).sum(1, keepdim=True)], dim=1).t()
        distances = torch.cat([vectors, vectors.new_ones(vectors.shape[0], 1)], dim=1) @ codes_t
        best_dist, best_code = distances.min(dim=1)
        return best_code, best_dist + vectors.pow(2).sum(1)


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
    if torch.compiler.is_exporting():
        return _nearest_codes_traceable(vectors, codebook)
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
    Output of a quantizer's `quantize` (every [`VQVAEQuantizerBase`]).

    Args:
        quantized (`torch.FloatTensor` of shape `[B, D, *spatial]`):
            What the decoder sees: the code vectors, with straight-through (or relaxed, `"gumbel"`) gradients
            to the input in training.
        codes (`torch.LongTensor` of shape `[B, *spatial]`, or `[B, Q, *spatial]` for `"rvq"`):
            The code at each position (each level's, for `"rvq"`).
        commitment_loss (`torch.FloatTensor` of shape `()`):
            `||z_e - sg[e]||^2` (mean; summed over the levels of `"rvq"`), not yet multiplied by the commitment
            cost. Zero for `"gumbel"` and `"fsq"`.
        codebook_loss (`torch.FloatTensor` of shape `()`):
            `||sg[z_e] - e||^2` (mean) with `codebook_update="loss"`; zero with EMA updates and for `"gumbel"`
            and `"fsq"`.
        perplexity (`torch.FloatTensor` of shape `()`):
            exp(entropy) of the batch's code distribution (over all processes in training). For `"rvq"`, of
            the codes offset by `level * K` (the ids a language model reads), which is Q times the geometric
            mean of the levels' perplexities.
        codebook_usage (`torch.FloatTensor` of shape `()`):
            Share of the K codes used at least once in the batch (of the Q * K for `"rvq"`).
        extra_loss (`torch.FloatTensor` of shape `()`):
            Any further loss of the quantizer, already weighted, that the model adds to its loss as it is
            (`"gumbel"`: `gumbel_kl_weight` times the KL divergence to the uniform prior); zero otherwise.
    """

    quantized: torch.FloatTensor | None = None
    codes: torch.LongTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    codebook_usage: torch.FloatTensor | None = None
    extra_loss: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------
# Quantizers


class VQVAEQuantizerBase(nn.Module):
    """What [`VQVAEModel`] asks of a quantizer: latents `[B, D, *spatial]` in, codes `[B, *spatial]` out
    (`[B, Q, *spatial]` for a residual quantizer).

    `mask` (`[B, *spatial]` bools, True = a real position; None: all are): padding positions (an audio batch's
    frames past a clip's end) still get codes, but count in no loss and in no statistic, learnt or reported.

    The lookup path, pure in every mode (it changes no parameter or buffer and runs no collective; where it
    draws random numbers in training, they come from a generator seeded by the quantizer's step buffer):

    - `quantize(latents)` -> [`VQVAEQuantizerOutput`]: codes, the quantized latents the decoder sees, losses
      and the batch's statistics.
    - `lookup(codes)` -> the quantized latents `[B, D, *spatial]` of `codes`.
    - `forward(latents)` is `quantize`, `forward(codes=codes)` is `lookup`: the model calls the module, so
      its hooks fire (accelerate's offloading loads the codebook around them).

    The learning path, which [`VQVAEModel.forward`] calls in training only, on every process, in this order:

    - `initialize(latents)` before `quantize`: state learnt from the batch before its first lookup (k-means).
    - `update(latents, output)` after `quantize`: state learnt from the batch and its codes (EMA statistics,
      restarts). Returns `output` with its statistics taken over all processes.

    Both run the same collectives on every process. A quantizer without learnt state keeps the defaults.
    """

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        # Host copies of scalar buffers (`_host_scalar`), so training steps never read them back from a device.
        self._host_scalars: dict[str, tuple[torch.Tensor, int, int]] = {}

    def reset_parameters(self) -> None:
        """The initial values of the quantizer's own parameters and buffers."""

    def quantize(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> VQVAEQuantizerOutput:
        raise NotImplementedError

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def initialize(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Learn what must precede the first training lookup. Default: nothing."""

    def update(
        self, latents: torch.Tensor, output: VQVAEQuantizerOutput, mask: torch.Tensor | None = None
    ) -> VQVAEQuantizerOutput:
        """Learn from a training batch and its `quantize` output. Default: nothing; returns `output`."""
        return output

    def forward(
        self,
        latents: torch.Tensor | None = None,
        codes: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> VQVAEQuantizerOutput | torch.Tensor:
        """`quantize(latents, mask)`, or `lookup(codes)`: exactly one of them."""
        if (latents is None) == (codes is None):
            raise ValueError("Pass one of `latents` (to quantize) or `codes` (to look up).")
        return self.quantize(latents, mask) if codes is None else self.lookup(codes)

    def check_codes_shape(self, codes: torch.Tensor) -> None:
        """Raise a ValueError unless `codes` has this quantizer's layout (`config.codes_layout`). Reads no
        value of `codes` (the range check is the model's)."""
        config = self.config
        if codes.dim() != config.spatial_dims + 1:
            raise ValueError(
                f"`codes` must have shape {config.codes_layout} for a {config.modality} model, got {tuple(codes.shape)}."
            )

    def _grid_output(
        self,
        latents: torch.Tensor,
        quantized: torch.Tensor,
        codes: torch.Tensor,
        commitment_loss: torch.Tensor,
        codebook_loss: torch.Tensor,
        extra_loss: torch.Tensor,
        real: torch.Tensor | None = None,
    ) -> VQVAEQuantizerOutput:
        """The output of a one-code-per-position quantizer: flat `quantized` `[N, D]` and `codes` `[N]` back on the
        grid of `latents` (`[B, D, *spatial]`, `[B, *spatial]`), with the code statistics of the batch's real
        positions (`real`, see `real_rows`)."""
        batch, _, *spatial = latents.shape
        perplexity, usage = code_statistics(masked_code_counts(codes, self.codebook_size, real))
        return VQVAEQuantizerOutput(
            quantized=quantized.reshape(batch, *spatial, self.config.codebook_dim).movedim(-1, 1),
            codes=codes.reshape(batch, *spatial),
            commitment_loss=commitment_loss,
            codebook_loss=codebook_loss,
            perplexity=perplexity,
            codebook_usage=usage,
            extra_loss=extra_loss,
        )

    def _check_latents(self, latents: torch.Tensor) -> None:
        dim = self.config.codebook_dim
        if latents.dim() < 3 or latents.shape[1] != dim:
            raise ValueError(
                f"{type(self).__name__} expects latents of shape [B, {dim}, *spatial], got {tuple(latents.shape)}."
            )

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

    def _step_generator(self, device: torch.device) -> torch.Generator:
        """A generator seeded by the `step` buffer and this process's rank: the training noise of `quantize`
        is a function of the quantizer's state (pure, replayed after a resume), different on every process,
        and never drawn from the global RNG."""
        generator = torch.Generator(device=device)
        generator.manual_seed(self._host_scalar("step") * 1000003 + 7919 * (distributed_rank() + 1))
        return generator


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
        # Decorrelates the random choices of the levels of a residual quantizer (0: a single codebook).
        self.seed_offset = 0
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
        return self._to_lookup(channels_last_flat(latents))

    def _to_lookup(self, vectors: torch.Tensor) -> torch.Tensor:
        """Vectors `[N, D]` of the latent space -> the lookup space `[N, lookup_dim]`."""
        if self.in_proj is not None:
            vectors = self.in_proj(vectors)
        if self.config.use_l2_normalized_codes:
            vectors = l2norm(vectors)
        return vectors

    def _code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes of any shape -> their vectors in the latent space, `[*codes.shape, D]`."""
        vectors = F.embedding(codes, self.embed)
        return self.out_proj(vectors) if self.out_proj is not None else vectors

    def quantize(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> VQVAEQuantizerOutput:
        self._check_latents(latents)
        flat = self._lookup_space(latents)
        real = real_rows(mask, flat.shape[0])
        codes, _ = nearest_codes(flat, self.embed, self.config.distance_chunk_size)
        selected = F.embedding(codes, self.embed).to(flat.dtype)
        commitment_loss = _weighted_mean((flat - selected.detach()).pow(2).mean(1), None, real)
        codebook_loss = (
            flat.new_zeros(())
            if self.use_ema
            else _weighted_mean((selected - flat.detach()).pow(2).mean(1), None, real)
        )
        # The straight-through estimator where gradients flow; without them, the code vectors as they are.
        quantized = flat + (selected - flat).detach() if flat.requires_grad else selected
        if self.out_proj is not None:
            quantized = self.out_proj(quantized)
        return self._grid_output(
            latents, quantized, codes, commitment_loss, codebook_loss, commitment_loss.new_zeros(()), real
        )

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors for `codes` `[B, *spatial]` -> `[B, D, *spatial]`."""
        return self._code_vectors(codes).movedim(-1, 1)

    # -- learning path: training only, the same collectives on every rank --------------------------------
    @torch.no_grad()
    def initialize(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """k-means init of the codebook on the first training batch's real positions (when `kmeans_init`);
        then a no-op."""
        if self.config.kmeans_init and not self._host_scalar("initialized"):
            flat = self._lookup_space(latents).float()
            self._kmeans_init(flat if mask is None else _real_part(flat, mask))

    @torch.no_grad()
    def update(
        self, latents: torch.Tensor, output: VQVAEQuantizerOutput, mask: torch.Tensor | None = None
    ) -> VQVAEQuantizerOutput:
        """Usage statistics, EMA codebook update, dead-code restarts from the real positions; `output`'s
        perplexity and usage become those of all processes' batches."""
        flat = self._lookup_space(latents).float()
        counts = self._learn(flat, output.codes.reshape(-1), real_rows(mask, flat.shape[0]))
        output.perplexity, output.codebook_usage = code_statistics(counts)
        return output

    def _learn(self, flat: torch.Tensor, codes: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """One learning step from lookup-space vectors `[N, d]` (float32) and their codes `[N]`, the rows
        weighted by `real` (1 = real, 0 = padding; None: all real); returns the code counts `[K]` of all
        processes."""
        counts = all_reduce_sum(masked_code_counts(codes, self.codebook_size, real))
        self.code_usage.mul_(USAGE_DECAY).add_(counts, alpha=1 - USAGE_DECAY)
        if self.use_ema:
            self._ema_update(flat, codes, counts, real)
        if self.config.dead_code_threshold > 0:
            self._restart_dead_codes(flat, real)
        return counts

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
        generator.manual_seed(
            seed * 1000003 + 17 + (0 if rank is None else 7919 * (rank + 1)) + 104729 * self.seed_offset
        )
        return generator

    def _candidates(self, flat: torch.Tensor, count: int, real: torch.Tensor | None = None) -> torch.Tensor:
        """`count` random rows of every process's batch (its real rows, with `real`), shuffled alike on every
        process: `[>= count, d]` (a collective)."""
        rank = distributed_rank()
        generator = self._generator(flat.device, rank)
        if real is None:
            local = torch.randint(0, flat.shape[0], (count,), device=flat.device, generator=generator)
        else:  # padding rows only where a batch has no real row at all (no host sync to find out)
            local = torch.multinomial(real + 1e-6, count, replacement=True, generator=generator)
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

    def _ema_update(
        self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor, real: torch.Tensor | None = None
    ) -> None:
        codes, bins = real_codes(codes, real, self.codebook_size)
        sums = all_reduce_sum(cluster_sums(flat, codes, bins)[: self.codebook_size])
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

    def _restart_dead_codes(self, flat: torch.Tensor, real: torch.Tensor | None = None) -> None:
        """Codes whose moving-average use fell below `dead_code_threshold` take a random recent encoder output.

        Every step, whatever the number of dead codes: one candidate per code from all processes' batches,
        kept where the code is dead (`torch.where`), so no count is read back to the host and every rank runs
        the same collective.
        """
        dead = (self.code_usage < self.config.dead_code_threshold).unsqueeze(1)  # identical on every rank
        count = -(-self.codebook_size // distributed_world_size())
        picked = self._candidates(flat, count, real)[: self.codebook_size]
        if self.config.use_l2_normalized_codes:
            picked = l2norm(picked)
        mean_use = self.code_usage.mean()
        self.embed.data.copy_(torch.where(dead, picked, self.embed))
        self.embed_avg.copy_(torch.where(dead, picked * mean_use, self.embed_avg))
        self.cluster_size.copy_(torch.where(dead[:, 0], mean_use, self.cluster_size))
        self.code_usage.copy_(torch.where(dead[:, 0], mean_use, self.code_usage))


class _Float32Linear(nn.Linear):
    """`nn.Linear` computed in float32 whatever its weights' dtype and the autocast state. Called as a module
    (never read through `.weight`), so hooks on it fire: accelerate's disk offload loads its weights then."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            return F.linear(inputs.float(), self.weight.float(), self.bias.float())


class VQVAEGumbelQuantizer(VQVAEQuantizerBase):
    """Gumbel-softmax quantizer (DALL-E's dVAE, Ramesh et al. 2021, https://arxiv.org/abs/2102.12092; Jang et
    al. 2016, https://arxiv.org/abs/1611.01144).

    A linear map turns each latent `[D]` into logits over the K codes; each code has a learnt vector `[D]`
    (`embed`). In training, `quantize` draws a Gumbel-softmax sample at the temperature of the current step
    (cosine-annealed from `gumbel_temperature` to `gumbel_temperature_min` over `gumbel_anneal_steps`) and the
    decoder sees the sample's mix of code vectors (`gumbel_hard`: the one-hot sample, with the soft sample's
    gradients); the codes are the sample's argmax. In evaluation and `encode`, the codes are the argmax of the
    logits, deterministically. The KL divergence of the code distribution to the uniform prior, weighted by
    `gumbel_kl_weight`, is the output's `extra_loss`.

    Everything learns by gradient; the only state is the `step` buffer, which `update` advances and which
    seeds the noise (with the process's rank): `quantize` stays a function of the state and the input.
    """

    def __init__(self, config: VQVAEConfig):
        super().__init__(config)
        self.codebook_size = config.codebook_size
        self.to_logits = _Float32Linear(config.codebook_dim, config.codebook_size)
        self.embed = nn.Parameter(torch.empty(config.codebook_size, config.codebook_dim))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Code vectors N(0, 1) (the scale of the encoder's outputs); step 0. `to_logits` keeps nn.Linear's
        own init."""
        init.normal_(self.embed, 0.0, 1.0)
        init.zeros_(self.step)
        self._host_scalars.clear()

    @property
    def codebook(self) -> torch.Tensor:
        """The code vectors, `[K, D]`."""
        return self.embed

    def temperature(self, step: int | None = None) -> float:
        """The Gumbel-softmax temperature at training step `step` (default: the current one): cosine from
        `gumbel_temperature` down to `gumbel_temperature_min` over `gumbel_anneal_steps`, then constant."""
        config = self.config
        step = self._host_scalar("step") if step is None else step
        total = config.gumbel_anneal_steps
        progress = 1.0 if total == 0 else min(step / total, 1.0)
        low, high = config.gumbel_temperature_min, config.gumbel_temperature
        return low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def logits(self, latents: torch.Tensor) -> torch.Tensor:
        """Float32 logits `[B, *spatial, K]` of latents `[B, D, *spatial]`, whatever the autocast state."""
        return self.to_logits(latents.movedim(1, -1))

    def quantize(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> VQVAEQuantizerOutput:
        self._check_latents(latents)
        flat = channels_last_flat(latents)
        real = real_rows(mask, flat.shape[0])
        sampling = self.training
        if sampling or flat.requires_grad or torch.compiler.is_exporting():
            codes, kl, mean_probs, quantized = self._relaxed(flat, sampling, real)
        else:
            codes, kl, mean_probs = self._argmax_in_chunks(flat, real)
            quantized = F.embedding(codes, self.embed)
        zero = kl.new_zeros(())
        return self._grid_output(latents, quantized, codes, zero, zero, self._prior_loss(kl, mean_probs), real)

    def _prior_loss(self, kl: torch.Tensor, mean_probs: torch.Tensor | None) -> torch.Tensor:
        """`gumbel_kl_weight` x the mean per-position KL to the uniform prior + `gumbel_diversity_weight` x the
        KL of the mean code distribution `mean_probs` `[K]` to it (None: that weight is 0)."""
        loss = self.config.gumbel_kl_weight * kl
        if mean_probs is not None:
            mean_kl = (mean_probs * (mean_probs.clamp(min=1e-12).log() + math.log(self.codebook_size))).sum()
            loss = loss + self.config.gumbel_diversity_weight * mean_kl
        return loss

    def _relaxed(
        self, flat: torch.Tensor, sampling: bool, real: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Codes `[N]`, the mean KL to the uniform prior over the real rows, their mean code distribution `[K]`
        (None when `gumbel_diversity_weight` is 0), and what the decoder sees `[N, D]` with gradients: the (hard
        or soft) Gumbel-softmax sample's code vectors when `sampling`, else the argmax's."""
        with torch.autocast(device_type=flat.device.type, enabled=False):
            logits = self.to_logits(flat)
            log_probs = logits.log_softmax(dim=-1)
            probs = log_probs.exp()
            kl = _weighted_mean((probs * (log_probs + math.log(self.codebook_size))).sum(-1), None, real)
            mean_probs = None
            if self.config.gumbel_diversity_weight > 0:
                mean_probs = _real_probs_sum(probs, real) / _real_count(real, flat.shape[0])
            if not sampling:
                codes = logits.argmax(dim=-1)
                return codes, kl, mean_probs, F.embedding(codes, self.embed)
            # Gumbel(0, 1) noise as -log(-log(U)): on CPU `rand` and two logs take a third of the time of
            # `exponential_` (-log(Exp(1))), which took half of the quantizer's step. U = 0 gives -inf (never
            # sampled), U < 1 a finite value.
            generator = self._step_generator(logits.device)
            noise = torch.rand(logits.shape, generator=generator, device=logits.device)
            noise = noise.log_().neg_().log_().neg_()
            soft = ((logits + noise) / self.temperature()).softmax(dim=-1)
            codes = soft.argmax(dim=-1)
            if self.config.gumbel_hard:
                hard = torch.zeros_like(soft).scatter_(-1, codes[:, None], 1.0)  # one_hot reads codes back
                soft = hard - soft.detach() + soft
            return codes, kl, mean_probs, soft @ self.embed.float()

    @torch.no_grad()
    def _argmax_in_chunks(
        self, flat: torch.Tensor, real: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Codes, the mean KL of the real rows and their mean code distribution (None when
        `gumbel_diversity_weight` is 0), without gradients, `distance_chunk_size` logits at a time (bounded
        memory)."""
        rows = max(1, self.config.distance_chunk_size // self.codebook_size)
        codes = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        kl_sum = torch.zeros((), dtype=torch.float32, device=flat.device)
        probs_sum = None  # only when the diversity term needs it: encode's path does no extra work
        if self.config.gumbel_diversity_weight > 0:
            probs_sum = torch.zeros(self.codebook_size, dtype=torch.float32, device=flat.device)
        with torch.autocast(device_type=flat.device.type, enabled=False):
            for start in range(0, flat.shape[0], rows):
                logits = self.to_logits(flat[start : start + rows])
                log_probs = logits.log_softmax(dim=-1)
                probs = log_probs.exp()
                chunk_real = None if real is None else real[start : start + rows]
                kl_rows = (probs * (log_probs + math.log(self.codebook_size))).sum(-1)
                kl_sum += kl_rows.sum() if chunk_real is None else (kl_rows * chunk_real).sum()
                if probs_sum is not None:
                    probs_sum += _real_probs_sum(probs, chunk_real)
                codes[start : start + rows] = logits.argmax(dim=-1)
        count = _real_count(real, flat.shape[0])
        return codes, kl_sum / count, None if probs_sum is None else probs_sum / count

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors for `codes` `[B, *spatial]` -> `[B, D, *spatial]`."""
        return F.embedding(codes, self.embed).movedim(-1, 1)

    @torch.no_grad()
    def update(
        self, latents: torch.Tensor, output: VQVAEQuantizerOutput, mask: torch.Tensor | None = None
    ) -> VQVAEQuantizerOutput:
        """Advances the step (temperature, noise); `output`'s statistics become those of all processes."""
        counts = all_reduce_sum(masked_code_counts(output.codes, self.codebook_size, real_rows(mask, output.codes.numel())))
        self._set_host_scalar("step", self._host_scalar("step") + 1)
        output.perplexity, output.codebook_usage = code_statistics(counts)
        return output


class VQVAEResidualLevel(VQVAEVectorQuantizer):
    """One level of [`VQVAEResidualVectorQuantizer`]: a `"vq"` codebook whose call also takes the residual step,
    `level(residual=..., weights=...)`, so every use of its tensors in `quantize` and `lookup` happens inside a
    call of the level (its hooks fire: accelerate's disk offload loads the codebook then)."""

    def forward(
        self,
        *args,
        residual: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        real: torch.Tensor | None = None,
        **kwargs,
    ):
        """`quantize_residual(residual, weights, real)` when `residual` is given; else the quantizer's forward."""
        if residual is None:
            return super().forward(*args, **kwargs)
        return self.quantize_residual(residual, weights, real)

    def quantize_residual(
        self, residual: torch.Tensor, weights: torch.Tensor | None, real: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Residual `[N, D]` (float32) -> `(codes [N], quantized [N, D] with straight-through gradients,
        commitment loss, codebook loss)`, the losses counting each row by its weight (None: all rows), over
        the real rows (`real`; None: all)."""
        flat = self._to_lookup(residual)
        codes, _ = nearest_codes(flat, self.embed, self.config.distance_chunk_size)
        selected = F.embedding(codes, self.embed)
        quantized = flat + (selected - flat).detach() if flat.requires_grad else selected
        if self.out_proj is not None:
            quantized = self.out_proj(quantized)
        commitment = _weighted_mean((flat - selected.detach()).pow(2).mean(1), weights, real)
        codebook = (
            flat.new_zeros(())
            if self.use_ema
            else _weighted_mean((selected - flat.detach()).pow(2).mean(1), weights, real)
        )
        return codes, quantized, commitment, codebook


class VQVAEResidualVectorQuantizer(VQVAEQuantizerBase):
    """Residual vector quantizer (SoundStream, Zeghidour et al. 2021, https://arxiv.org/abs/2107.03312; EnCodec,
    DAC): `num_quantizers` codebooks of K codes, level `l` quantizing what levels `0..l-1` left over.

    Each level is a [`VQVAEVectorQuantizer`] (`levels[l]`, a [`VQVAEResidualLevel`]) with all of its
    machinery: k-means initialisation on the first batch's residuals (level after level), EMA or loss updates,
    dead-code restarts, the exact fp32 search. Codes are `[B, Q, *spatial]`; `lookup` (and so the model's `decode`) takes any number of levels from
    1 to Q, the first ones: the coarse-to-fine sum of their code vectors.

    Quantizer dropout (`quantizer_dropout`, SoundStream): in training, that share of the examples of a batch
    uses only its first `n` levels, `n` uniform in 1..Q, so one model decodes any number of levels. Every
    level still quantizes every example's residual, and learns from all of them; the straight-through output
    and the losses count an example's levels up to its `n` only. As in DAC, each level passes gradients
    straight through to its residual, so the encoder's gradient is that of a single straight-through step. The
    residuals are float32 whatever the autocast state. The draws come from a generator seeded by the `step`
    buffer (advanced by `update`) and the rank.
    """

    def __init__(self, config: VQVAEConfig):
        super().__init__(config)
        self.codebook_size = config.codebook_size
        self.num_quantizers = config.num_quantizers
        self.levels = nn.ModuleList(VQVAEResidualLevel(config) for _ in range(config.num_quantizers))
        for index, level in enumerate(self.levels):
            level.seed_offset = index
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Step 0 (each level resets its own codebook)."""
        init.zeros_(self.step)
        self._host_scalars.clear()

    def check_codes_shape(self, codes: torch.Tensor) -> None:
        config = self.config
        if codes.dim() != config.spatial_dims + 2 or not 1 <= codes.shape[1] <= self.num_quantizers:
            raise ValueError(
                f"`codes` must have shape {config.codes_layout} with 1 <= Q <= {self.num_quantizers} levels for "
                f"a {config.modality} model with quantizer_type='rvq', got {tuple(codes.shape)}."
            )

    def _example_levels(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """`[Q, B]` bools: which levels each example uses in this training step (None: all of them)."""
        dropout = self.config.quantizer_dropout
        if not self.training or dropout == 0 or self.num_quantizers == 1 or torch.compiler.is_exporting():
            return None
        generator = self._step_generator(torch.device("cpu"))
        dropped = torch.rand(batch, generator=generator) < dropout
        drawn = torch.randint(1, self.num_quantizers + 1, (batch,), generator=generator)
        used = torch.where(dropped, drawn, torch.full_like(drawn, self.num_quantizers))
        return (torch.arange(self.num_quantizers)[:, None] < used[None, :]).to(device)

    def quantize(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> VQVAEQuantizerOutput:
        self._check_latents(latents)
        batch, dim, *spatial = latents.shape
        positions = math.prod(spatial)
        example_levels = self._example_levels(batch, latents.device)
        with torch.autocast(device_type=latents.device.type, enabled=False):
            residual = channels_last_flat(latents).float()
            real = real_rows(mask, residual.shape[0])
            total = commitment_loss = codebook_loss = None
            all_codes = []
            for index, level in enumerate(self.levels):
                weights = None
                if example_levels is not None:
                    weights = example_levels[index].repeat_interleave(positions).to(residual.dtype)
                codes, quantized, commitment, codebook = level(residual=residual, weights=weights, real=real)
                contribution = quantized if weights is None else quantized * weights[:, None]
                if total is None:
                    total, commitment_loss, codebook_loss = contribution, commitment, codebook
                else:
                    total = total + contribution
                    commitment_loss = commitment_loss + commitment
                    codebook_loss = codebook_loss + codebook
                residual = residual - quantized
                all_codes.append(codes)
        codes = torch.stack(all_codes)  # [Q, N]
        offsets = torch.arange(self.num_quantizers, device=codes.device)[:, None] * self.codebook_size
        real_levels = None if real is None else real.repeat(self.num_quantizers)
        perplexity, usage = code_statistics(
            masked_code_counts(codes + offsets, self.num_quantizers * self.codebook_size, real_levels)
        )
        return VQVAEQuantizerOutput(
            quantized=total.reshape(batch, *spatial, dim).movedim(-1, 1),
            codes=codes.reshape(self.num_quantizers, batch, *spatial).movedim(0, 1),
            commitment_loss=commitment_loss,
            codebook_loss=codebook_loss,
            perplexity=perplexity,
            codebook_usage=usage,
            extra_loss=commitment_loss.new_zeros(()),
        )

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """The sum of the code vectors of the first `codes.shape[1]` levels: codes `[B, Q', *spatial]`
        (1 <= Q' <= Q) -> `[B, D, *spatial]` (float32)."""
        with torch.autocast(device_type=codes.device.type, enabled=False):
            total = None
            for index in range(codes.shape[1]):
                vectors = self.levels[index](codes=codes[:, index])  # a call: the level's hooks fire
                total = vectors if total is None else total + vectors
        return total

    @torch.no_grad()
    def initialize(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """k-means init of each level (when `kmeans_init`) on the residuals the levels before it leave at the
        real positions, the levels taken in order; then a no-op."""
        levels = list(self.levels)
        if not self.config.kmeans_init or all(level._host_scalar("initialized") for level in levels):
            return
        residual = channels_last_flat(latents).float()
        residual = residual if mask is None else _real_part(residual, mask)
        for index, level in enumerate(levels):
            with torch.autocast(device_type=residual.device.type, enabled=False):
                flat = level._to_lookup(residual).float()
                if not level._host_scalar("initialized"):
                    level._kmeans_init(flat)
                if index + 1 < len(levels):
                    codes, _ = nearest_codes(flat, level.embed, self.config.distance_chunk_size)
                    residual = residual - level._code_vectors(codes).float()

    @torch.no_grad()
    def update(
        self, latents: torch.Tensor, output: VQVAEQuantizerOutput, mask: torch.Tensor | None = None
    ) -> VQVAEQuantizerOutput:
        """Each level learns from its residual (as `quantize` saw it, rebuilt from the codes) and its codes at
        the real positions; advances the step; `output`'s statistics become those of all processes."""
        residual = channels_last_flat(latents).float()
        real = real_rows(mask, residual.shape[0])
        counts = []
        with torch.autocast(device_type=residual.device.type, enabled=False):
            for index, level in enumerate(self.levels):
                codes = output.codes[:, index].reshape(-1)
                flat = level._to_lookup(residual).float()
                vectors = level._code_vectors(codes).float()  # before this level's codebook moves
                counts.append(level._learn(flat, codes, real))
                residual = residual - vectors
        self._set_host_scalar("step", self._host_scalar("step") + 1)
        output.perplexity, output.codebook_usage = code_statistics(torch.cat(counts))
        return output


class VQVAEFiniteScalarQuantizer(VQVAEQuantizerBase):
    """Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple",
    https://arxiv.org/abs/2309.15505).

    A linear map takes each latent `[D]` to `d = len(fsq_levels)` dimensions (none when D = d); each is bounded
    by tanh to (-1, 1) and rounded to one of its `L` levels: the `L` equal bins of (-1, 1), each represented by
    its centre `(2 i + 1) / L - 1`, `i` in `0..L-1` (for odd `L` the paper's grid, zero included; equal bins
    serve even `L` and `L = 2` too, which the paper's offset grid serves poorly). Rounding passes gradients
    straight through. The code is the mixed-radix number of the digits `i` (the first dimension least
    significant), so the implicit codebook holds every combination, prod(levels) codes. A linear map takes the
    `d` values back to `D`. Nothing but the two maps is learnt: no codebook, no codebook loss, no state. The
    rounding runs in float32 whatever the autocast state.
    """

    def __init__(self, config: VQVAEConfig):
        super().__init__(config)
        self.codebook_size = config.codebook_size
        self.levels = list(config.fsq_levels)
        dims = len(self.levels)
        if config.codebook_dim != dims:
            self.project_in = nn.Linear(config.codebook_dim, dims)
            self.project_out = nn.Linear(dims, config.codebook_dim)
        else:
            self.project_in = self.project_out = None
        self._constants: dict = {}  # per device: the levels and place values (config, not state)

    def _levels_and_basis(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """`(levels, place values)` as int64 tensors `[d]` on `device` (kept, not buffers: they are config)."""
        if device not in self._constants:
            levels = torch.tensor(self.levels, dtype=torch.long, device=device)
            basis = torch.cumprod(torch.tensor([1] + self.levels[:-1], dtype=torch.long), 0).to(device)
            self._constants[device] = (levels, basis)
        return self._constants[device]

    def digits_to_codes(self, digits: torch.Tensor) -> torch.Tensor:
        """Digits `[..., d]` (each in `[0, L_j)`) -> codes `[...]` in `[0, prod(levels))`."""
        _, basis = self._levels_and_basis(digits.device)
        return (digits * basis).sum(-1)

    def codes_to_digits(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `[...]` -> digits `[..., d]`, the inverse of `digits_to_codes`."""
        levels, basis = self._levels_and_basis(codes.device)
        return torch.div(codes.unsqueeze(-1), basis, rounding_mode="floor") % levels

    def digit_values(self, digits: torch.Tensor) -> torch.Tensor:
        """Digits `[..., d]` -> their level values in (-1, 1), float32: the bins' centres `(2 i + 1) / L - 1`."""
        levels, _ = self._levels_and_basis(digits.device)
        return (2 * digits + 1).float() / levels - 1.0

    def bound(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vectors `[..., d]` -> (bounded float32 values in (-1, 1), their digits as int64)."""
        bounded, digits = self._bound_float(vectors)
        return bounded, digits.long()

    def _bound_float(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`bound` with the digits as float32 (exact small integers): no int64 pass over the vectors."""
        levels = self._float_levels(vectors.device)
        bounded = torch.tanh(vectors.float())
        # NaN latents take the middle level, so codes stay in range whatever comes in; bounded >= -1 gives >= 0.
        digits = torch.nan_to_num(bounded, nan=0.0).add_(1.0).mul_(levels / 2).floor_()
        return bounded, torch.minimum(digits, levels - 1)

    def _float_levels(self, device: torch.device) -> torch.Tensor:
        levels, _ = self._levels_and_basis(device)
        key = ("float", device)
        if key not in self._constants:
            self._constants[key] = levels.float()
        return self._constants[key]

    def quantize(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> VQVAEQuantizerOutput:
        self._check_latents(latents)
        flat = channels_last_flat(latents)
        with torch.autocast(device_type=latents.device.type, enabled=False):
            if self.project_in is not None:
                flat = self.project_in(flat.float())
            bounded, digits = self._bound_float(flat)
            levels = self._float_levels(flat.device)
            values = digits.mul(2.0).add_(1.0).div_(levels).sub_(1.0)  # the bins' centres, as digit_values
            if bounded.requires_grad:
                values = bounded + (values - bounded).detach()  # straight-through rounding
            quantized = self.project_out(values) if self.project_out is not None else values
            _, basis = self._levels_and_basis(flat.device)
            codes = (digits @ basis.float()).long()  # exact in float32: codes < 2^24
        zero = values.new_zeros(())
        return self._grid_output(latents, quantized, codes, zero, zero, zero, real_rows(mask, codes.numel()))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """The quantized latents of `codes` `[B, *spatial]` -> `[B, D, *spatial]` (float32)."""
        with torch.autocast(device_type=codes.device.type, enabled=False):
            values = self.digit_values(self.codes_to_digits(codes))
            quantized = self.project_out(values) if self.project_out is not None else values
        return quantized.movedim(-1, 1)

    @torch.no_grad()
    def update(
        self, latents: torch.Tensor, output: VQVAEQuantizerOutput, mask: torch.Tensor | None = None
    ) -> VQVAEQuantizerOutput:
        """Nothing to learn; `output`'s statistics become those of all processes (real positions only)."""
        counts = all_reduce_sum(masked_code_counts(output.codes, self.codebook_size, real_rows(mask, output.codes.numel())))
        output.perplexity, output.codebook_usage = code_statistics(counts)
        return output


def _real_count(real: torch.Tensor | None, rows: int) -> torch.Tensor | int:
    """How many of `rows` rows are real (`real`, 1 = real; None: all), at least 1: the denominator of their
    means."""
    return rows if real is None else real.sum().clamp(min=1)


def _real_probs_sum(probs: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """The sum over the real rows of `probs` `[N, K]` -> `[K]` (`real`: 1 = real; None: all)."""
    return probs.sum(0) if real is None else real @ probs


def _weighted_mean(
    rows: torch.Tensor, weights: torch.Tensor | None, real: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of `rows` `[N]` over the real rows (`real`, 1 = real; None: all N), each row counted by its weight
    (0 or 1; None: 1). Weights below the real rows' count are DAC's masked mean (quantizer dropout)."""
    if weights is not None:
        rows = rows * weights
    if real is None:
        return rows.mean()
    return (rows * real).sum() / _real_count(real, rows.shape[0])


def _real_part(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The rows of `flat` `[N, d]` at real positions (a host sync: for the one-off k-means only); all rows if
    there are none."""
    keep = mask.reshape(-1).bool()
    return flat[keep] if bool(keep.any()) else flat


QUANTIZER_CLASSES: dict[str, type[VQVAEQuantizerBase]] = {
    "vq": VQVAEVectorQuantizer,
    "gumbel": VQVAEGumbelQuantizer,
    "rvq": VQVAEResidualVectorQuantizer,
    "fsq": VQVAEFiniteScalarQuantizer,
}


def build_quantizer(config: VQVAEConfig) -> VQVAEQuantizerBase:
    """The quantizer `config.quantizer_type` names, built from `config`."""
    return QUANTIZER_CLASSES[config.quantizer_type](config)


__all__ = [
    "QUANTIZER_CLASSES",
    "VQVAEFiniteScalarQuantizer",
    "VQVAEGumbelQuantizer",
    "VQVAEQuantizerBase",
    "VQVAEQuantizerOutput",
    "VQVAEResidualVectorQuantizer",
    "VQVAEVectorQuantizer",
    "build_quantizer",
    "nearest_codes",
    "parallel_nearest_codes",
]
