"""VQ-VAE tokenizer model (van den Oord et al. 2017, https://arxiv.org/abs/1711.00937).

Self-contained on purpose: it imports only torch, transformers and the configuration, so that
`register_for_auto_class` can ship it to the Hub and `trust_remote_code=True` loads it where
`vq_tokenizer` is not installed.
"""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
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


def broadcast_from_first(tensor: torch.Tensor) -> torch.Tensor:
    """Copy rank 0's tensor to every process, in place (a collective)."""
    if distributed_world_size() > 1:
        dist.broadcast(tensor, src=0)
    return tensor


# Nearest-code search on CPU: tiles of the distance matrix sized for the cache, a two-step argmin, and one
# Python thread per core over row ranges. Tuned on a 2-core AMD EPYC (512 KiB L2 per core, 32 MiB L3): 2048
# codes x 256 rows (2 MiB of fp32 distances) per thread; see benchmarks/README.md for the measurements.
_CPU_TILE_CODES = 2048
_CPU_TILE_ENTRIES_PER_THREAD = 1 << 19
_ARGMIN_GROUP = 64
_THREADS_LOCK = threading.Lock()


def _tile_argmin(
    distances: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    group_minima: torch.Tensor,
    row_offsets: torch.Tensor,
) -> None:
    """`distances.min(dim=1)` of a `[n, k]` tile into `values`, `indices` (`[n]` each), with the same
    values and the same (first) indices.

    On CPU `min(dim=1)` with indices runs ~20x slower than the vectorised `amin`; at K = 512 it took as long
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
    torch.add(winners.argmin(dim=1), indices, alpha=_ARGMIN_GROUP, out=indices)


def _tile_workspace(
    vectors: torch.Tensor, rows_per_tile: int, codes_per_tile: int
) -> tuple[torch.Tensor, ...]:
    """The buffers of one search loop: distances, group minima, row offsets, tile minima and their codes."""
    return (
        vectors.new_empty(rows_per_tile * codes_per_tile),
        vectors.new_empty(rows_per_tile * max(1, codes_per_tile // _ARGMIN_GROUP)),
        torch.arange(rows_per_tile, device=vectors.device),
        vectors.new_empty(rows_per_tile),
        torch.empty(rows_per_tile, dtype=torch.long, device=vectors.device),
    )


@torch.no_grad()
def _nearest_codes_in_tiles(
    vectors: torch.Tensor,
    code_tiles: list[tuple[int, torch.Tensor, torch.Tensor]],
    best_code: torch.Tensor,
    best_dist: torch.Tensor,
    workspace: tuple[torch.Tensor, ...],
) -> None:
    """The search for float32 `vectors` `[n, D]` into `best_code`, `best_dist` (`[n]`): `[rows, codes]` tiles
    of distances, one `(start, codes [D, k], squared norms [k])` entry of `code_tiles` at a time, all in the
    `workspace` buffers (the loop allocates only `[rows]`-sized temporaries)."""
    buffer, group_minima, row_offsets, tile_best, tile_code = workspace
    rows_per_tile = tile_best.shape[0]
    on_cpu = vectors.device.type == "cpu"
    for row in range(0, vectors.shape[0], rows_per_tile):
        rows = vectors[row : row + rows_per_tile]
        n = rows.shape[0]
        row_best, row_code = best_dist[row : row + n], best_code[row : row + n]
        values, indices = tile_best[:n], tile_code[:n]
        for start, codes_t, codes_sq in code_tiles:
            # ||e||^2 - 2 z.e : the ||z||^2 term is the same for every code, so argmin ignores it.
            dists = buffer[: n * codes_t.shape[1]].view(n, codes_t.shape[1])
            torch.addmm(codes_sq, rows, codes_t, beta=1.0, alpha=-2.0, out=dists)
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
            this many entries (over all threads) through preallocated buffers, so its extra memory does not
            grow with N x K. On CPU the tiles are smaller still (cache-sized, 2 MiB per thread), which is
            also faster.

    Returns:
        `(codes [N] int64, squared_distances [N] float32)`. Computed in float32 whatever the input dtype
        or autocast state; among equal float32 distances the lowest code wins.

    On CPU with `torch.get_num_threads() > 1` and enough rows, the rows are split into one range per thread,
    each searched by a Python thread running single-threaded torch ops (torch's thread count is 1 for the
    duration of the call, then restored; concurrent calls that do so take turns). The ops of one tile are
    too small to split among threads well: each split is a synchronisation, and on a busy 2-core machine
    those waits made the search 6x slower; independent row ranges need none.
    """
    device_type = vectors.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        vectors = vectors.float()
        codebook = codebook.float()
        num_vectors, num_codes = vectors.shape[0], codebook.shape[0]
        codebook_sq = codebook.pow(2).sum(1)
        best_dist = vectors.new_empty(num_vectors)
        best_code = torch.empty(num_vectors, dtype=torch.long, device=vectors.device)
        threads = torch.get_num_threads() if device_type == "cpu" else 1
        if device_type == "cpu":
            tile_entries = max(1, min(chunk_size // threads, _CPU_TILE_ENTRIES_PER_THREAD))
            codes_per_tile = min(num_codes, _CPU_TILE_CODES, tile_entries)
            if codes_per_tile >= 2 * _ARGMIN_GROUP:
                codes_per_tile -= codes_per_tile % _ARGMIN_GROUP
        else:
            tile_entries, codes_per_tile = chunk_size, min(num_codes, chunk_size)
        rows_per_tile = max(1, min(num_vectors, tile_entries // codes_per_tile))
        parts = max(1, min(threads, num_vectors // rows_per_tile))
        code_tiles = [
            (start, codebook[start : start + codes_per_tile].t(), codebook_sq[start : start + codes_per_tile])
            for start in range(0, num_codes, codes_per_tile)
        ]
        # Buffers are allocated here, in the caller's thread, where memory profilers look for them.
        workspaces = [_tile_workspace(vectors, rows_per_tile, codes_per_tile) for _ in range(parts)]
        bounds = [num_vectors * part // parts for part in range(parts + 1)]

        def search(part: int) -> None:
            rows = slice(bounds[part], bounds[part + 1])
            _nearest_codes_in_tiles(
                vectors[rows], code_tiles, best_code[rows], best_dist[rows], workspaces[part]
            )

        if parts == 1:
            search(0)
            return best_code, best_dist
        with _THREADS_LOCK:  # callers that change torch's thread count take turns
            restore = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with concurrent.futures.ThreadPoolExecutor(parts) as pool:
                    list(pool.map(search, range(parts)))  # list() re-raises a worker's exception
            finally:
                torch.set_num_threads(restore)
    return best_code, best_dist


def cluster_sums(vectors: torch.Tensor, codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Sum of the rows of `vectors` `[N, D]` assigned to each code -> `[K, D]`.

    A sparse one-hot `[K, N]` times `vectors`: on CPU this is ~100x faster than `index_add_`, whose
    duplicate indices serialise, and unlike a dense one-hot it needs no N x K memory.
    """
    positions = torch.arange(codes.shape[0], device=codes.device)
    one_hot = torch.sparse_coo_tensor(
        torch.stack([codes, positions]),
        torch.ones(codes.shape[0], dtype=vectors.dtype, device=vectors.device),
        (num_codes, codes.shape[0]),
        check_invariants=False,  # indices are in range by construction
    )
    return torch.sparse.mm(one_hot, vectors)


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
# Vector quantizer


class VQVAEVectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantizer with straight-through gradients.

    Input latents `[B, D, *spatial]`; output [`VQVAEQuantizerOutput`] with `quantized` of the same shape
    and `codes` `[B, *spatial]` (int64).

    The codebook learns by EMA (default; paper appendix A.1, Laplace-smoothed counts) or by the codebook
    loss. Usage tricks, all optional: k-means initialisation on the first training batch, restart of dead
    codes from recent encoder outputs, l2-normalised codes and a low-dimensional lookup space (Yu et al.
    2021, https://arxiv.org/abs/2110.04627).

    Distributed training: the EMA statistics and usage counts are all-reduced, and k-means candidates and
    restart candidates are all-gathered and chosen with a generator seeded identically on every rank, so
    every process holds the same codebook. Each training forward runs the same collectives on every rank:
    the only branches depend on state that is already identical across ranks. Eval mode runs no
    collective and never changes the codebook.
    """

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
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
        self.reset_codebook()

    @torch.no_grad()
    def reset_codebook(self) -> None:
        """Uniform(-1/K, 1/K) codebook (the paper's init); statistics zeroed; k-means pending."""
        bound = 1.0 / self.codebook_size
        self.embed.uniform_(-bound, bound)
        if self.config.use_l2_normalized_codes:
            self.embed.copy_(l2norm(self.embed))
        self.embed_avg.copy_(self.embed)
        self.cluster_size.zero_()
        self.code_usage.zero_()
        self.initialized.fill_(0)
        self.restart_seed.zero_()

    @property
    def codebook(self) -> torch.Tensor:
        """The code vectors in the model's latent space, `[K, D]`."""
        embed = self.embed
        return self.out_proj(embed) if self.out_proj is not None else embed

    def _generator(self, device: torch.device, rank: int | None = None) -> torch.Generator:
        """A generator seeded from the `restart_seed` buffer: none of the quantizer's random choices touch
        the global RNG, so they replay exactly after a resume (data loaders draw from the global RNG).

        `rank=None`: the same seed on every process (restart_seed is identical everywhere), for choices all
        ranks must agree on; it then advances the seed. With a rank: a per-process stream for local picks.
        """
        generator = torch.Generator(device=device)
        seed = int(self.restart_seed.item()) * 1000003 + 17
        if rank is None:
            self.restart_seed += 1
        else:
            seed += 7919 * (rank + 1)
        generator.manual_seed(seed)
        return generator

    def _candidates(self, flat: torch.Tensor, count: int) -> torch.Tensor:
        """`count` random rows of the local batch from every process, concatenated (a collective)."""
        rank = dist.get_rank() if distributed_world_size() > 1 else 0
        generator = self._generator(flat.device, rank=rank)
        index = torch.randint(0, flat.shape[0], (count,), device=flat.device, generator=generator)
        return all_gather_cat(flat[index].detach().float())

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        """Distributed Lloyd k-means over the first batch of every process (sums all-reduced)."""
        pool = self._candidates(flat, self.codebook_size)
        choice = torch.randperm(pool.shape[0], generator=self._generator(pool.device), device=pool.device)
        centers = pool[choice[: self.codebook_size]].clone()
        data = flat.detach().float()
        if self.config.use_l2_normalized_codes:
            centers = l2norm(centers)
        for _ in range(self.config.kmeans_iters):
            codes, _ = nearest_codes(data, centers, self.config.distance_chunk_size)
            sums = cluster_sums(data, codes, self.codebook_size)
            counts = torch.bincount(codes, minlength=self.codebook_size).to(data.dtype)
            all_reduce_sum(sums)
            all_reduce_sum(counts)
            filled = counts > 0
            updated = sums / counts.clamp(min=1).unsqueeze(1)
            if self.config.use_l2_normalized_codes:
                updated = l2norm(updated)
            centers = torch.where(filled.unsqueeze(1), updated, centers)
        self.embed.data.copy_(centers)
        self.embed_avg.copy_(centers)
        # Start every code at the mean use of the batch, so no code counts as dead before it is tried.
        mean_use = data.shape[0] * distributed_world_size() / self.codebook_size
        self.cluster_size.fill_(mean_use)
        self.embed_avg.mul_(mean_use)
        self.code_usage.fill_(mean_use)
        self.initialized.fill_(1)

    @torch.no_grad()
    def _update_statistics(self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        self.code_usage.mul_(USAGE_DECAY).add_(counts, alpha=1 - USAGE_DECAY)
        decay = self.config.ema_decay
        if not self.use_ema:
            return
        sums = cluster_sums(flat.detach().float(), codes, self.codebook_size)
        all_reduce_sum(sums)
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        self.embed_avg.mul_(decay).add_(sums, alpha=1 - decay)
        total = self.cluster_size.sum()
        eps = self.config.ema_epsilon
        smoothed = (self.cluster_size + eps) / (total + self.codebook_size * eps) * total
        embed = self.embed_avg / smoothed.unsqueeze(1)
        if self.config.use_l2_normalized_codes:
            embed = l2norm(embed)
        self.embed.data.copy_(embed)

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        threshold = self.config.dead_code_threshold
        if threshold <= 0:
            return
        dead = self.code_usage < threshold  # identical on every rank: code_usage is all-reduced
        num_dead = int(dead.sum().item())
        if num_dead == 0:
            return
        pool = self._candidates(flat, num_dead)
        choice = torch.randperm(pool.shape[0], generator=self._generator(pool.device), device=pool.device)
        picked = pool[choice[:num_dead]]
        if self.config.use_l2_normalized_codes:
            picked = l2norm(picked)
        mean_use = float(self.code_usage.mean())
        self.embed.data[dead] = picked
        self.code_usage[dead] = mean_use
        self.cluster_size[dead] = mean_use
        self.embed_avg[dead] = picked * mean_use

    def forward(self, latents: torch.Tensor) -> VQVAEQuantizerOutput:
        if latents.dim() < 3 or latents.shape[1] != self.codebook_dim:
            raise ValueError(
                f"VQVAEVectorQuantizer expects latents of shape [B, {self.codebook_dim}, *spatial], "
                f"got {tuple(latents.shape)}."
            )
        batch, _, *spatial = latents.shape
        flat = channels_last_flat(latents)
        if self.in_proj is not None:
            flat = self.in_proj(flat)
        if self.config.use_l2_normalized_codes:
            flat = l2norm(flat)

        if self.training and self.config.kmeans_init and not bool(self.initialized.item()):
            self._kmeans_init(flat)

        codes, _ = nearest_codes(flat, self.embed, self.config.distance_chunk_size)
        counts = torch.bincount(codes, minlength=self.codebook_size).float()
        if self.training:
            all_reduce_sum(counts)
            self._update_statistics(flat, codes, counts)
            self._restart_dead_codes(flat)

        selected = F.embedding(codes, self.embed).to(flat.dtype)
        commitment_loss = F.mse_loss(flat, selected.detach())
        if self.use_ema:
            codebook_loss = flat.new_zeros(())
        else:
            codebook_loss = F.mse_loss(selected, flat.detach())
        quantized = flat + (selected - flat).detach()  # straight-through estimator
        if self.out_proj is not None:
            quantized = self.out_proj(quantized)

        probs = counts / counts.sum().clamp(min=1)
        perplexity = torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum())
        usage = (counts > 0).float().mean()
        quantized = quantized.reshape(batch, *spatial, self.codebook_dim).movedim(-1, 1)
        return VQVAEQuantizerOutput(
            quantized=quantized,
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


# ----------------------------------------------------------------------------------------------------------
# Encoder and decoder


def _conv(config: VQVAEConfig) -> type[nn.Module]:
    return nn.Conv2d if config.modality == "image" else nn.Conv1d


def _conv_transpose(config: VQVAEConfig) -> type[nn.Module]:
    return nn.ConvTranspose2d if config.modality == "image" else nn.ConvTranspose1d


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
        elif isinstance(module, VQVAEVectorQuantizer):
            module.reset_codebook()


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
        layout = "[B, C, H, W]" if config.modality == "image" else "[B, C, T]"
        if inputs.dim() != config.spatial_dims + 2:
            hint = (
                " (add a batch dimension with `.unsqueeze(0)`)"
                if inputs.dim() == config.spatial_dims + 1
                else ""
            )
            raise ValueError(f"`{name}` must have shape {layout}, got {tuple(inputs.shape)}{hint}.")
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
        layout = "[B, h, w]" if config.modality == "image" else "[B, t]"
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
        quantized = self.quantizer(latents)
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
        quantized = self.quantizer(latents)
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
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        except RuntimeError as error:
            if "mismatch" not in str(error):
                raise
            raise ValueError(
                "The checkpoint's tensor shapes do not match this VQVAEConfig (another codebook_size, "
                "codebook_dim or width; see the load report above). Load it with the config saved beside it."
            ) from error
        except OSError as error:
            if "model.safetensors" not in str(error):
                raise
            raise OSError(
                f"{source} has no model.safetensors. VQVAEModel loads safetensors only and never unpickles "
                "`.bin` files; convert trusted weights with `model.save_pretrained(dir)` (safetensors is the "
                "default)."
            ) from error
        except Exception as error:
            if type(error).__name__ != "SafetensorError":
                raise
            raise ValueError(
                f"The weights file of {source} is truncated or corrupt ({error}). Download it again "
                "(`force_download=True`) or save the model again."
            ) from error
        problems = {key: info.get(key) for key in ("missing_keys", "mismatched_keys", "unexpected_keys")}
        problems = {key: value for key, value in problems.items() if value}
        if problems:
            raise ValueError(
                f"The checkpoint does not match this VQVAEConfig ({problems}); it was saved with another "
                "codebook_size, codebook_dim or width. Load it with the config saved beside it."
            )
        return (model, info) if wants_info else model


__all__ = [
    "VQVAEModel",
    "VQVAEPreTrainedModel",
    "VQVAEVectorQuantizer",
    "VQVAEOutput",
    "VQVAEEncoderOutput",
    "VQVAEDecoderOutput",
    "VQVAEQuantizerOutput",
    "nearest_codes",
]
