"""Our speech recipe against transformers' own EnCodec, trained from scratch on the same clips for the same
wall time and evaluated the same way, at 1.5, 3 and 6 kbit/s (issue 15).

    python benchmarks/speech_codec.py                              # the recipe's minutes for each model
    python benchmarks/speech_codec.py --peer_size both --minutes 5
    python benchmarks/speech_codec.py --ours_dir out/speech        # ours already trained by the recipe

The recipe (`--recipe`, default training/configs/speech.yaml) is read at run time, so the peer follows it:
its data (`dataset_name`, the offline speech corpus by default), random crops of `audio_crop_seconds`, batch
`per_device_batch_size`, the optimizer (Adam as training/train_vqvae.py builds it: `learning_rate`, betas,
`weight_decay`, `max_grad_norm`), warm-up and schedule (`vq_tokenizer.training.TrainingSchedule`, annealed
over the time budget), `seed` and `num_threads` (default 2). Both models train for `--minutes` (default: the
recipe's `max_train_minutes`) and at most `--max_steps` steps (default: the recipe's `max_steps`), without
intermediate evaluations or checkpoints (`--eval_every 0 --checkpoint_every 0`), on the same seeded sampler.

- **ours**: training/train_vqvae.py's `main()` with the recipe (`--output_dir`/ours), or `--ours_dir`, a folder
  the recipe wrote (`VQVAEModel` + `VQVAEFeatureExtractor.from_pretrained`; steps and seconds from its
  metrics.json). A residual quantizer is decoded from its first n levels at each bitrate b,
  n = floor(b * 1000 / (frame_rate * log2 K)), within [1, Q]; another quantizer gives one row per group at its
  own bitrate.
- **peer**: `transformers.EncodecModel(EncodecConfig(sampling_rate=16000, audio_channels=1,
  upsampling_ratios=[8, 5, 4, 2] (hop 320, 50 frames/s), codebook_size=1024, target_bandwidths=[1.5, 3, 6]))`,
  its default architecture (`--peer_size default`, 14.9M parameters) or one scaled down to about our parameter
  count (`--peer_size matched`: `num_filters` and `hidden_size = 4 * num_filters`, the default ratio; `both`
  runs the two). transformers' EnCodec has no rule to learn its codebooks (zero buffers), so this script gives
  its `EncodecEuclideanCodebook`s EnCodec's: k-means (50 iterations) on the first batch, EMA of cluster sizes and
  sums (decay 0.99) with Laplace smoothing (1e-5), codes whose EMA size falls below
  `--peer_dead_code_threshold` replaced by random vectors of the batch, and the commitment loss (weight 1, mean
  over the levels used), with straight-through gradients. Each step draws its bandwidth from
  `target_bandwidths`, as EnCodec trains, and uses and updates only those levels. Losses, by default the
  recipe's own mix through ours' `vq_tokenizer.modeling_vqvae.reconstruction_losses` (so the two differ in model
  and quantizer, not in what they are asked to reproduce):
  `--peer_l1_weight` (the recipe's `reconstruction_loss_weight`; 0.1 is
  EnCodec's time-domain weight) x waveform L1 + `--peer_stft_weight` (`stft_loss_weight`) x
  `vq_tokenizer.modeling_vqvae.multi_resolution_stft_loss` (spectral convergence + log-magnitude L1, FFT sizes
  `--peer_fft_sizes`, the recipe's `stft_fft_sizes`) + `--peer_mel_weight` (`mel_loss_weight`) x
  `multi_scale_mel_loss` (`--peer_mel_fft_sizes`; EnCodec's own frequency loss is on mel spectrograms at several
  scales) + `--peer_correlation_weight` (`correlation_loss_weight`) x `waveform_correlation_loss` + 1.0 x
  commitment, the log floors of both spectral losses the recipe's. No adversarial loss. The
  mix of issue 15's anchor (waveform L1 + multi-resolution spectral loss) is `--peer_l1_weight 0.1
  --peer_stft_weight 1 --peer_mel_weight 0 --peer_fft_sizes 512 1024 2048`.
  Its peak learning rate is the recipe's unless `--peer_learning_rate` says otherwise.
  It encodes with `encode(..., bandwidth=b)` and decodes with `decode` (transformers' own code).

Evaluation, identical for both: every clip of the test split, whole, one at a time (ours' feature extractor:
resampled, padded to ours' hop with a padding mask), through `vq_tokenizer.metrics.speech_metrics_per_item` over
the real samples (SI-SNR, STOI, wideband PESQ, log-mel L1), averaged per group of
`vq_tokenizer.speech_corpus.clip_group` (synthetic voices, real recordings, the noise clip). PESQ averages the
clips it can score (its count is printed). Rows are printed as a table, written to `--json FILE` and appended
as JSON lines to `--output` (benchmarks/results/speech_codec.jsonl), each with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.REPO_ROOT / "training"))
import train_vqvae  # noqa: E402

from vq_tokenizer import VQVAEFeatureExtractor, VQVAEModel  # noqa: E402
from vq_tokenizer.metrics import speech_metrics_per_item  # noqa: E402
from vq_tokenizer.modalities import modality_for  # noqa: E402
from vq_tokenizer.modalities.audio import bitrate_kbps  # noqa: E402
from vq_tokenizer.modeling_vqvae import reconstruction_losses  # noqa: E402
from vq_tokenizer.speech_corpus import clip_group  # noqa: E402

RECIPE = common.REPO_ROOT / "training" / "configs" / "speech.yaml"
BITRATES = (1.5, 3.0, 6.0)
GROUPS = ("synthetic", "recorded", "noise", "all")  # report order; "all" only for clips of no known group
METRICS = ("si_snr", "stoi", "pesq", "mel_l1")
PEER = dict(
    sampling_rate=16000,
    audio_channels=1,
    upsampling_ratios=[8, 5, 4, 2],  # hop 320: 50 frames/s
    codebook_size=1024,
    target_bandwidths=list(BITRATES),
)
# EnCodec's codebook learning rules (its repository's defaults).
KMEANS_ITERS = 50
EMA_DECAY = 0.99
LAPLACE_EPSILON = 1e-5
# EnCodec's dead-code threshold is 2 vectors a step, for its batches of thousands of frames per codebook. At
# the recipe's batch (16 x 0.5 s x 50 frames/s = 400 frames for 1024 codes) a code's expected EMA count is
# 0.4, so that threshold restarts about half of every codebook at every step (5.1M restarts in 805 steps when
# we ran it): the peer takes the recipe's `dead_code_threshold` (the same unit: vectors a step) unless told.
ENCODEC_DEAD_CODE_THRESHOLD = 2.0
COMMITMENT_WEIGHT = 1.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default=str(RECIPE), help="the speech recipe both models follow")
    parser.add_argument("--minutes", type=float, default=None, help="training budget of each model (default: the recipe's max_train_minutes)")  # fmt: skip
    parser.add_argument("--max_steps", "--max-steps", type=int, default=None, help="also stop after this many steps (default: the recipe's max_steps)")  # fmt: skip
    parser.add_argument("--ours_dir", default=None, help="a folder the recipe trained: evaluate it instead of training ours")  # fmt: skip
    parser.add_argument("--peer_size", choices=("default", "matched", "both", "none"), default="default")
    parser.add_argument(
        "--bitrates", type=float, nargs="+", default=list(BITRATES), help="kbit/s, from 1.5 3 6"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the recipe's num_threads, else 2)")  # fmt: skip
    parser.add_argument("--max_eval_samples", type=int, default=None, help="evaluate the first N test clips only")  # fmt: skip
    parser.add_argument("--peer_learning_rate", type=float, default=None, help="the peer's peak learning rate (default: the recipe's; EnCodec's paper: 3e-4)")  # fmt: skip
    parser.add_argument("--peer_l1_weight", type=float, default=None, help="waveform L1 weight (default: the recipe's reconstruction_loss_weight)")  # fmt: skip
    parser.add_argument("--peer_stft_weight", type=float, default=None, help="multi-resolution STFT weight (default: the recipe's stft_loss_weight)")  # fmt: skip
    parser.add_argument("--peer_fft_sizes", type=int, nargs="+", default=None, help="its FFT sizes (default: the recipe's stft_fft_sizes)")  # fmt: skip
    parser.add_argument("--peer_mel_weight", type=float, default=None, help="multi-scale mel weight (default: the recipe's mel_loss_weight; 0 for none)")  # fmt: skip
    parser.add_argument("--peer_correlation_weight", type=float, default=None, help="waveform-correlation weight (default: the recipe's correlation_loss_weight; 0 for none)")  # fmt: skip
    parser.add_argument("--peer_dead_code_threshold", type=float, default=None, help=f"restart a peer code whose EMA count falls below this (vectors a step; default: the recipe's dead_code_threshold; EnCodec's: {ENCODEC_DEAD_CODE_THRESHOLD:g})")  # fmt: skip
    parser.add_argument("--peer_mel_fft_sizes", type=int, nargs="+", default=None, help="its FFT sizes (default: the recipe's mel_fft_sizes)")  # fmt: skip
    parser.add_argument("--output_dir", default="out/speech_codec", help="ours/ and peer-<size>/ are saved here")  # fmt: skip
    parser.add_argument(
        "--json", default=None, help="write the rows (and the run's settings) to this JSON file"
    )
    parser.add_argument("--output", default=str(common.default_output("speech_codec")), help="JSON lines appended")  # fmt: skip
    args = parser.parse_args(argv)
    unknown = sorted(set(args.bitrates) - set(BITRATES))
    if unknown:
        parser.error(
            f"--bitrates must be among {list(BITRATES)} (the peer's target_bandwidths), got {unknown}"
        )
    return args


# ------------------------------------------------------------------------------------------------ the recipe


def recipe_arguments(args: argparse.Namespace, output_dir: Path) -> tuple[list[str], dict]:
    """The command line of train_vqvae.py both models train by, and the recipe as read."""
    recipe = yaml.safe_load(Path(args.recipe).read_text()) or {}
    minutes = args.minutes if args.minutes is not None else recipe.get("max_train_minutes")
    max_steps = args.max_steps if args.max_steps is not None else recipe.get("max_steps", 1000)
    threads = args.threads or recipe.get("num_threads") or 2
    argv = [
        "--config", args.recipe, "--output_dir", str(output_dir), "--max_steps", str(max_steps),
        "--num_threads", str(threads), "--eval_every", "0", "--checkpoint_every", "0", "--report_to", "none",
    ]  # fmt: skip
    if minutes is not None:
        argv += ["--max_train_minutes", str(minutes)]
    if args.max_eval_samples:
        argv += ["--max_eval_samples", str(args.max_eval_samples)]
    return argv, recipe


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ ours


def train_ours(argv: list[str]) -> tuple[VQVAEModel, VQVAEFeatureExtractor, dict]:
    metrics = train_vqvae.main(argv)
    output_dir = Path(argv[argv.index("--output_dir") + 1])
    model, extractor = load_ours(output_dir)
    return model, extractor, {"steps": metrics.get("step"), "train_seconds": metrics.get("train_seconds")}


def load_ours(folder: Path) -> tuple[VQVAEModel, VQVAEFeatureExtractor]:
    model = VQVAEModel.from_pretrained(folder).eval()
    return model, VQVAEFeatureExtractor.from_pretrained(folder)


def ours_run_figures(folder: Path) -> dict:
    path = Path(folder) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    return {"steps": metrics.get("step"), "train_seconds": metrics.get("train_seconds")}


def ours_levels(config, bitrates) -> list[tuple[float | None, int | None]]:
    """(target kbit/s, levels) of each row: a residual quantizer's first n levels per bitrate, or the model."""
    if config.quantizer_type != "rvq":
        return [(None, None)]
    per_level = config.frame_rate * math.log2(config.codebook_size) / 1000
    return [(b, min(config.codes_per_position, max(1, math.floor(b / per_level + 1e-9)))) for b in bitrates]


class OursCodec:
    def __init__(self, model: VQVAEModel, levels: int | None) -> None:
        self.model, self.levels = model, levels

    @torch.no_grad()
    def __call__(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        codes = self.model.encode(input_values=values).codes
        if self.levels is not None:
            codes = codes[:, : self.levels]
        return self.model.decode(codes).reconstruction


# ------------------------------------------------------------------------------------------------ the peer


def peer_config(num_filters: int | None = None):
    from transformers import EncodecConfig

    sizes = {} if num_filters is None else {"num_filters": num_filters, "hidden_size": 4 * num_filters}
    return EncodecConfig(**PEER, **sizes)


def peer_parameters(config) -> int:
    from transformers import EncodecModel

    with torch.device("meta"):  # counted without allocating or initialising anything
        return count_parameters(EncodecModel(config))


def matched_peer_config(target: int):
    """The EnCodec config whose parameter count is closest to `target` (num_filters 2..32, hidden 4x)."""
    candidates = [peer_config(filters) for filters in range(2, 33, 2)]
    return min(candidates, key=lambda config: abs(peer_parameters(config) - target))


class EncodecCodebookTraining:
    """EnCodec's learning rules for transformers' `EncodecEuclideanCodebook` buffers (`embed`, `embed_avg`,
    `cluster_size`), applied level by level to the residual of the levels before it.

    Per level, on the real frames of the batch: k-means on the first batch the level sees; the nearest codes
    (transformers' own `quantize`); the codes as they were before this step's update go on, straight-through,
    and into the commitment loss (MSE of the detached code and the residual); then the EMA of the code counts
    and sums, the codebook set to the sums over the Laplace-smoothed counts; then codes whose EMA count is below
    the threshold take random vectors of the batch, their statistics reset to the threshold's worth of that
    vector (in EnCodec's own code the EMA copy of the same step overwrites the replacement; here it lasts).
    Each level's residual subtracts the detached codes, and the sum goes on straight-through once, as audiocraft
    fixed EnCodec's residual quantizer (facebookresearch/encodec#25): subtracting each level's straight-through
    output instead leaves every later residual without a gradient, so only the first level's commitment loss
    would reach the encoder.
    """

    def __init__(self, quantizer, generator: torch.Generator, dead_code_threshold: float) -> None:
        self.codebooks = [layer.codebook for layer in quantizer.layers]
        self.threshold = dead_code_threshold
        self.initialized = [False] * len(self.codebooks)
        self.generator = generator
        self.replaced = 0

    def _sample(self, vectors: torch.Tensor, count: int) -> torch.Tensor:
        n = vectors.shape[0]
        if n >= count:
            index = torch.randperm(n, generator=self.generator)[:count]
        else:
            index = torch.randint(0, n, (count,), generator=self.generator)
        return vectors[index]

    def _kmeans(self, vectors: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        means = self._sample(vectors, size)
        counts = torch.zeros(size)
        for _ in range(KMEANS_ITERS):
            assignment = torch.cdist(vectors, means).argmin(dim=1)
            counts = torch.bincount(assignment, minlength=size).to(vectors.dtype)
            sums = torch.zeros_like(means).index_add_(0, assignment, vectors)
            empty = counts == 0
            means = torch.where(empty[:, None], means, sums / counts.clamp(min=1)[:, None])
        return means, counts

    @torch.no_grad()
    def _learn(self, level: int, vectors: torch.Tensor, codes: torch.Tensor) -> None:
        book = self.codebooks[level]
        size = book.codebook_size
        onehot = F.one_hot(codes, size).to(vectors.dtype)
        book.cluster_size.mul_(EMA_DECAY).add_(onehot.sum(0), alpha=1 - EMA_DECAY)
        book.embed_avg.mul_(EMA_DECAY).add_(onehot.t() @ vectors, alpha=1 - EMA_DECAY)
        total = book.cluster_size.sum()
        smoothed = (book.cluster_size + LAPLACE_EPSILON) / (total + size * LAPLACE_EPSILON) * total
        book.embed.copy_(book.embed_avg / smoothed[:, None])
        dead = book.cluster_size < self.threshold
        if dead.any():
            fresh = self._sample(vectors, int(dead.sum()))
            book.embed[dead] = fresh
            book.embed_avg[dead] = fresh * self.threshold
            book.cluster_size[dead] = self.threshold
            self.replaced += int(dead.sum())

    def __call__(
        self, latents: torch.Tensor, levels: int, frames: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """latents `[B, D, t]`, the real frames `[B, t]` -> quantized latents (straight-through), commitment."""
        inputs = latents.transpose(1, 2)  # [B, t, D]
        residual = inputs
        dim = residual.shape[-1]
        weights = frames.to(residual.dtype).unsqueeze(-1)
        quantized_sum = torch.zeros_like(residual)
        commitments = []
        real_rows = frames.reshape(-1)
        for level in range(levels):
            book = self.codebooks[level]
            flat = residual.detach().reshape(-1, dim)
            real = flat[real_rows]
            if not self.initialized[level]:
                with torch.no_grad():
                    means, counts = self._kmeans(real, book.codebook_size)
                    book.embed.copy_(means)
                    book.embed_avg.copy_(means)
                    book.cluster_size.copy_(counts)
                self.initialized[level] = True
            codes = book.quantize(flat)
            quantized = book.decode(codes).view_as(residual)
            error = (quantized.detach() - residual).pow(2) * weights
            commitments.append(error.sum() / (weights.sum() * dim).clamp(min=1))
            self._learn(level, real, codes[real_rows])
            quantized_sum = quantized_sum + quantized.detach()
            residual = residual - quantized.detach()
        straight = inputs + (quantized_sum - inputs).detach()
        return straight.transpose(1, 2), torch.stack(commitments).mean()


def resolve_peer_losses(args: argparse.Namespace, ours) -> None:
    """The peer's loss weights and FFT sizes the command line left out: the recipe's (`ours`, its VQVAEConfig)."""
    defaults = {
        "peer_l1_weight": ours.reconstruction_loss_weight,
        "peer_stft_weight": ours.stft_loss_weight,
        "peer_fft_sizes": list(ours.stft_fft_sizes),
        "peer_mel_weight": ours.mel_loss_weight,
        "peer_mel_fft_sizes": list(ours.mel_fft_sizes),
        "peer_correlation_weight": ours.correlation_loss_weight,
        "peer_dead_code_threshold": ours.dead_code_threshold,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.peer_stft_floor, args.peer_mel_floor = ours.stft_loss_floor, ours.mel_loss_floor  # the recipe's, always


def peer_losses(args: argparse.Namespace) -> str:
    sizes = "/".join(str(s) for s in args.peer_fft_sizes)
    text = (
        f"{args.peer_l1_weight:g} x waveform L1 + {args.peer_stft_weight:g} x multi-resolution STFT "
        f"(spectral convergence + log-magnitude L1 floored at {args.peer_stft_floor:g}, FFT {sizes})"
    )
    if args.peer_mel_weight:
        mel_sizes = "/".join(str(s) for s in args.peer_mel_fft_sizes)
        text += (
            f" + {args.peer_mel_weight:g} x multi-scale log-mel L1 (floored at {args.peer_mel_floor:g}, "
            f"FFT {mel_sizes})"
        )
    if args.peer_correlation_weight:
        text += f" + {args.peer_correlation_weight:g} x waveform correlation (1 - cosine)"
    return text + f" + {COMMITMENT_WEIGHT:g} x commitment"


def train_peer(args: argparse.Namespace, argv: list[str], config) -> tuple[torch.nn.Module, dict]:
    """EncodecModel(config) trained as the recipe trains ours: its loader, crops, optimizer and schedule."""
    from transformers import EncodecModel

    recipe = train_vqvae.parse_args(argv)
    run = recipe.run
    accelerator = train_vqvae.setup(run)  # threads and seed, as for ours
    torch.manual_seed(run.seed)
    peer = EncodecModel(config).train()
    train_set, _, _, train_collate, _ = train_vqvae.build_data(recipe.data, recipe.config)
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=run.per_device_batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=train_collate,
    )
    loader = accelerator.prepare(loader)
    optimizer = torch.optim.Adam(
        peer.parameters(), lr=run.learning_rate, betas=(run.adam_beta1, run.adam_beta2), weight_decay=run.weight_decay
    )  # fmt: skip
    schedule = run.schedule()
    generator = torch.Generator().manual_seed(run.seed)
    rules = EncodecCodebookTraining(peer.quantizer, generator, args.peer_dead_code_threshold)
    mel_banks: dict = {}
    draws = random.Random(run.seed)
    hop = math.prod(config.upsampling_ratios)
    step, epoch, seconds, started = 0, 0, 0.0, time.time()
    while not schedule.finished(step, seconds):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for batch in loader:
            schedule.apply(optimizer, step, seconds)
            values, mask = batch["input_values"], batch["padding_mask"].bool()
            levels = peer.quantizer.get_num_quantizers_for_bandwidth(draws.choice(config.target_bandwidths))
            latents = peer.encoder(values)
            frames = F.pad(mask, (0, latents.shape[-1] * hop - mask.shape[-1]))
            frames = frames.reshape(mask.shape[0], -1, hop).any(-1)
            quantized, commitment = rules(latents, levels, frames)
            reconstruction = peer.decoder(quantized)[..., : values.shape[-1]]
            terms = reconstruction_losses(
                reconstruction,
                values,
                mask,
                waveform_weight=args.peer_l1_weight,
                stft_weight=args.peer_stft_weight,
                stft_fft_sizes=args.peer_fft_sizes,
                stft_floor=args.peer_stft_floor,
                mel_weight=args.peer_mel_weight,
                mel_fft_sizes=args.peer_mel_fft_sizes,
                sampling_rate=config.sampling_rate,
                mel_floor=args.peer_mel_floor,
                filter_banks=mel_banks,
                correlation_weight=args.peer_correlation_weight,
            )
            loss = terms["loss"] + COMMITMENT_WEIGHT * commitment
            if not torch.isfinite(loss):
                raise RuntimeError(f"the peer's loss is {loss.item()} at step {step}")
            loss.backward()
            if run.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(peer.parameters(), run.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            seconds = time.time() - started
            if step % run.log_every == 0:
                print(
                    f"peer step {step} ({seconds:.0f} s): loss {loss.item():.4f} ("
                    + ", ".join(f"{name} {value.item():.4f}" for name, value in terms.items() if name != "loss")
                    + f", commitment {commitment.item():.4f}), {levels} levels",
                    flush=True,
                )
            if schedule.finished(step, seconds):
                break
        else:
            epoch += 1
    peer.eval()
    accelerator.end_training()
    figures = {"steps": step, "train_seconds": round(seconds, 1), "learning_rate": run.learning_rate}
    return peer, {**figures, "codes_replaced": rules.replaced, "dead_code_threshold": rules.threshold}


class PeerCodec:
    def __init__(self, peer, bandwidth: float) -> None:
        self.peer, self.bandwidth = peer, bandwidth

    @torch.no_grad()
    def __call__(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        encoded = self.peer.encode(values, mask, bandwidth=self.bandwidth)
        decoded = self.peer.decode(encoded.audio_codes, encoded.audio_scales, mask)
        return decoded.audio_values[..., : values.shape[-1]]


def peer_kbps(peer, bandwidth: float) -> float:
    levels = peer.quantizer.get_num_quantizers_for_bandwidth(bandwidth)
    return levels * peer.config.frame_rate * math.log2(peer.config.codebook_size) / 1000


# ------------------------------------------------------------------------------------------------ evaluation


def test_clips(argv: list[str], extractor) -> list[tuple[str, dict]]:
    """(group, batch of one whole clip) for every test clip, batched by `extractor` (ours)."""
    recipe = train_vqvae.parse_args(argv)
    modality = modality_for(recipe.config)
    _, evaluation, _, _, _ = train_vqvae.build_data(recipe.data, recipe.config)
    column = modality.find_column(list(evaluation.column_names), recipe.data.audio_column)
    clips = []
    for row in evaluation:
        batch = modality.collate_examples(extractor, [row], column=column)
        speaker, source = row.get("speaker"), row.get("source")
        group = clip_group(None if speaker is None else str(speaker), None if source is None else str(source))
        clips.append((group, batch))
    return clips


def evaluate(codec, clips, sampling_rate: int) -> dict[str, dict]:
    """Per group: clip count and the mean of each figure (PESQ over the clips it scores, with their count)."""
    per_group: dict[str, dict[str, list[float]]] = {}
    for group, batch in clips:
        values, mask = batch["input_values"], batch["padding_mask"]
        estimate = codec(values, mask)
        figures = speech_metrics_per_item(estimate.float(), values.float(), mask, sampling_rate)
        for key in METRICS:
            per_group.setdefault(group, {}).setdefault(key, []).extend(figures[key].tolist())
    table = {}
    for group in sorted(per_group, key=GROUPS.index):
        lists = per_group[group]
        row = {"clips": len(lists["si_snr"])}
        for key in METRICS:
            kept = [v for v in lists[key] if not math.isnan(v)]
            row[key] = sum(kept) / len(kept) if kept else math.nan
        row["pesq_clips"] = sum(not math.isnan(v) for v in lists["pesq"])
        table[group] = row
    return table


def rows_of(model: str, kbps: float, target, levels, table: dict, run: dict, parameters: int) -> list[dict]:
    return [
        {"model": model, "kbps": round(kbps, 3), "target_kbps": target, "levels": levels, "group": group,
         **figures, **run, "parameters": parameters}
        for group, figures in table.items()
    ]  # fmt: skip


def print_table(rows: list[dict]) -> None:
    headers = ["model", "kbps", "group", "clips", "SI-SNR dB", "STOI", "PESQ (clips)", "mel L1", "steps", "train s", "parameters"]  # fmt: skip
    body = [
        [r["model"], f"{r['kbps']:g}", r["group"], r["clips"], common.fmt(r["si_snr"]), common.fmt(r["stoi"]),
         f"{common.fmt(r['pesq'])} ({r['pesq_clips']})", common.fmt(r["mel_l1"]), r["steps"], r["train_seconds"],
         f"{r['parameters']:,}"]
        for r in rows
    ]  # fmt: skip
    print(common.format_table(headers, body), flush=True)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    ours_argv, recipe = recipe_arguments(args, output_dir / "ours")
    resolve_peer_losses(args, train_vqvae.parse_args(ours_argv).config)
    threads = int(ours_argv[ours_argv.index("--num_threads") + 1])
    torch.set_num_threads(threads)
    env = common.environment(threads)
    print(common.describe_environment(env), flush=True)

    if args.ours_dir:
        model, extractor = load_ours(Path(args.ours_dir))
        ours_run = ours_run_figures(Path(args.ours_dir))
    else:
        model, extractor, ours_run = train_ours(ours_argv)
    ours_parameters = count_parameters(model)
    sizes = {"default": ["default"], "matched": ["matched"], "both": ["default", "matched"], "none": []}
    peers = {}
    for size in sizes[args.peer_size]:
        config = peer_config() if size == "default" else matched_peer_config(ours_parameters)
        peers[f"encodec-{size}"] = config
    print(f"ours: {ours_parameters:,} parameters ({model.config.quantizer_type}, K={model.config.codebook_size}, "
          f"{model.config.frame_rate:g} frames/s); trained {ours_run['steps']} steps in {ours_run['train_seconds']} s")  # fmt: skip
    for name, config in peers.items():
        print(f"{name}: {peer_parameters(config):,} parameters (num_filters {config.num_filters}, hidden "
              f"{config.hidden_size}, {config.num_quantizers} levels of K={config.codebook_size}, "
              f"{config.frame_rate} frames/s); losses: {peer_losses(args)}", flush=True)  # fmt: skip

    sampling_rate = int(extractor.sampling_rate)
    if sampling_rate != PEER["sampling_rate"]:
        raise SystemExit(f"the peer runs at {PEER['sampling_rate']} Hz; ours at {sampling_rate} Hz")
    clips = test_clips(ours_argv, extractor)
    rows = []
    for target, levels in ours_levels(model.config, args.bitrates):
        table = evaluate(OursCodec(model, levels), clips, sampling_rate)
        kbps = bitrate_kbps(model.config, levels)
        rows += rows_of("ours", kbps, target, levels, table, ours_run, ours_parameters)
    for name, config in peers.items():
        peer_argv = [*ours_argv]
        peer_argv[peer_argv.index("--output_dir") + 1] = str(output_dir / f"peer-{name}")
        if args.peer_learning_rate is not None:
            peer_argv += ["--learning_rate", str(args.peer_learning_rate)]
        peer, peer_run = train_peer(args, peer_argv, config)
        peer.save_pretrained(output_dir / f"peer-{name}")
        peer_run["losses"] = peer_losses(args)
        parameters = count_parameters(peer)
        for bandwidth in args.bitrates:
            table = evaluate(PeerCodec(peer, bandwidth), clips, sampling_rate)
            levels = peer.quantizer.get_num_quantizers_for_bandwidth(bandwidth)
            rows += rows_of(name, peer_kbps(peer, bandwidth), bandwidth, levels, table, peer_run, parameters)

    print(f"\nRecipe {args.recipe}: crops {recipe.get('audio_crop_seconds')} s, batch "
          f"{recipe.get('per_device_batch_size')}, lr {recipe.get('learning_rate')}; {len(clips)} test clips")  # fmt: skip
    print_table(rows)
    settings = {"recipe": args.recipe, "argv": ours_argv, "peer_losses": peer_losses(args)}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**env, "settings": settings, "rows": rows}, indent=2) + "\n")
    common.append_jsonl(args.output, [{**env, "script": "speech_codec", **row} for row in rows])
    return rows


if __name__ == "__main__":
    main()
