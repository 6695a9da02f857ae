"""Train a VQ-VAE tokenizer (images or audio) with Accelerate, on one or many processes.

    accelerate launch training/train_vqvae.py --config training/configs/fashion_mnist.yaml --output_dir out/fmnist
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --main_process_port 29511 \
        training/train_vqvae.py --config training/configs/tiny.yaml --output_dir out/tiny
    accelerate launch training/train_vqvae.py --config ... --output_dir out/fmnist --resume_from_checkpoint latest
    python training/train_vqvae.py --dataset_name path/to/imagefolder --image_column image --output_dir out/mine

Arguments come from a YAML recipe (`--config`; its `model:` mapping is the `VQVAEConfig`) and the command
line, which wins. The loop: prepare, train with gradient accumulation, evaluate every `eval_every` steps
(PSNR/SSIM or SI-SNR, codebook usage, perplexity; pictures), checkpoint atomically every
`checkpoint_every` steps, and at the end save the model, its processor, metrics.json and a model card.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, broadcast, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vq_tokenizer import VQVAEConfig, VQVAEFeatureExtractor, VQVAEImageProcessor, VQVAEModel
from vq_tokenizer.checkpointing import CheckpointManager, TrainingState, save_pretrained_atomic
from vq_tokenizer.data import (
    AUDIO_COLUMN_CANDIDATES,
    IMAGE_COLUMN_CANDIDATES,
    decode_audio_example,
    feature_extract_batch,
    find_column,
    load_audio_dataset,
    load_image_dataset,
    prepare_audio_column,
)
from vq_tokenizer.evaluation import evaluate
from vq_tokenizer.model_card import write_model_card


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", help="YAML recipe; its keys are these options, plus `model:` for VQVAEConfig"
    )
    parser.add_argument("--output_dir", required=True)
    # data
    parser.add_argument(
        "--dataset_name", default="fashion_mnist", help="fashion_mnist, a datasets id or a folder"
    )
    parser.add_argument("--dataset_config", default=None)
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--eval_split", default="test")
    parser.add_argument("--image_column", default=None)
    parser.add_argument("--audio_column", default=None)
    parser.add_argument("--streaming", action="store_true", help="stream the training split")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--image_size", type=int, default=None, help="resize images to this square size")
    parser.add_argument("--audio_crop_seconds", type=float, default=1.0, help="training crop length")
    # model (overrides of the recipe's `model:` mapping)
    parser.add_argument("--modality", choices=["image", "audio"], default=None)
    parser.add_argument("--in_channels", type=int, default=None)
    parser.add_argument("--codebook_size", type=int, default=None)
    parser.add_argument("--codebook_dim", type=int, default=None)
    parser.add_argument("--hidden_size", type=int, default=None)
    parser.add_argument("--codebook_update", choices=["ema", "loss"], default=None)
    parser.add_argument("--kmeans_init", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--dead_code_threshold", type=float, default=None)
    # optimisation
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per_device_batch_size", type=int, default=64)
    parser.add_argument("--eval_batch_size", type=int, default=256)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--lr_schedule", choices=["constant", "cosine"], default="constant")
    parser.add_argument("--warmup_steps", type=int, default=0)
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--max_steps", type=int, default=1000)
    parser.add_argument(
        "--max_train_minutes",
        type=float,
        default=None,
        help="also stop (and finish the LR schedule) after this long",
    )
    parser.add_argument("--mixed_precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--num_threads", type=int, default=None, help="torch threads per process")
    # evaluation, checkpoints, outputs
    parser.add_argument("--eval_every", type=int, default=0, help="0: only at the end")
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--checkpoint_every", type=int, default=0, help="0: no intermediate checkpoints")
    parser.add_argument("--checkpoints_total_limit", type=int, default=3)
    parser.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--report_to", default="tensorboard", help="tensorboard or none")
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None, help="defaults to the cached login / HF_TOKEN")
    parser.add_argument("--hub_private_repo", action="store_true")
    parser.add_argument("--push_checkpoints_to_branch", default=None, help="also push each checkpoint here")

    known, _ = parser.parse_known_args(argv)
    model_overrides: dict = {}
    if known.config:
        recipe = yaml.safe_load(Path(known.config).read_text()) or {}
        model_overrides = recipe.pop("model", {}) or {}
        unknown = sorted(set(recipe) - {action.dest for action in parser._actions})
        if unknown:
            parser.error(f"unknown keys in {known.config}: {unknown}")
        parser.set_defaults(**recipe)
    args = parser.parse_args(argv)
    model_keys = (
        "modality",
        "in_channels",
        "codebook_size",
        "codebook_dim",
        "hidden_size",
        "codebook_update",
        "kmeans_init",
        "dead_code_threshold",
    )
    for key in model_keys:
        if getattr(args, key) is not None:
            model_overrides[key] = getattr(args, key)
    args.model = model_overrides
    try:
        VQVAEConfig(**model_overrides)
    except (TypeError, ValueError) as error:
        parser.error(f"invalid model settings: {error}")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (e.g. me/vqvae-fashion-mnist)")
    return args


# ---------------------------------------------------------------------------------------------------------
# Data


def build_data(args, config: VQVAEConfig):
    """Datasets, the processor saved beside the model, and collate functions for train and eval."""
    if config.modality == "image":
        processor = VQVAEImageProcessor(
            num_channels=config.in_channels,
            size_divisor=config.downsampling_factor,
            do_resize=args.image_size is not None,
            size={"height": args.image_size, "width": args.image_size} if args.image_size else None,
        )
        train = load_image_dataset(args.dataset_name, args.train_split, args.dataset_config, args.streaming)
        evaluation = load_image_dataset(args.dataset_name, args.eval_split, args.dataset_config)
        column = find_column(
            list(train.column_names or evaluation.column_names),
            IMAGE_COLUMN_CANDIDATES,
            "image",
            args.image_column,
        )

        def collate(examples):
            return {
                "pixel_values": processor(
                    [example[column] for example in examples], return_tensors="pt"
                ).pixel_values
            }

        train_collate = eval_collate = collate
    else:
        processor = VQVAEFeatureExtractor(
            feature_size=config.in_channels, sampling_rate=config.sampling_rate, hop_length=config.hop_length
        )
        train = load_audio_dataset(args.dataset_name, args.train_split, args.dataset_config, args.streaming)
        evaluation = load_audio_dataset(args.dataset_name, args.eval_split, args.dataset_config)
        column = find_column(
            list(train.column_names or evaluation.column_names),
            AUDIO_COLUMN_CANDIDATES,
            "audio",
            args.audio_column,
        )
        train = prepare_audio_column(train, column)
        evaluation = prepare_audio_column(evaluation, column)
        crop = int(args.audio_crop_seconds * config.sampling_rate) // config.hop_length * config.hop_length

        def audio_items(examples):
            decoded = [
                decode_audio_example(example[column], example.get("sampling_rate")) for example in examples
            ]
            return [array for array, _ in decoded], [rate for _, rate in decoded]

        def train_collate(examples):
            arrays, rates = audio_items(examples)
            batch = feature_extract_batch(processor, arrays, rates)
            # A fresh random crop per item each time it is drawn, from torch's global generator: set_seed
            # seeds it and save_state/load_state restore it, so a resumed run goes on with the same crops.
            values, mask = batch["input_values"], batch["padding_mask"]
            length = min(crop, values.shape[-1])
            real = mask.sum(-1)
            starts = [int(torch.randint(0, max(1, int(n) - length + 1), ())) for n in real]
            values = torch.stack([v[..., s : s + length] for v, s in zip(values, starts, strict=True)])
            mask = torch.stack([m[s : s + length] for m, s in zip(mask, starts, strict=True)])
            return {"input_values": values, "padding_mask": mask}

        def eval_collate(examples):
            batch = feature_extract_batch(processor, *audio_items(examples))
            return {"input_values": batch["input_values"], "padding_mask": batch["padding_mask"]}

    if args.max_train_samples:
        train = (
            train.take(args.max_train_samples)
            if args.streaming
            else train.select(range(min(len(train), args.max_train_samples)))
        )
    if args.max_eval_samples:
        evaluation = evaluation.select(range(min(len(evaluation), args.max_eval_samples)))
    return train, evaluation, processor, train_collate, eval_collate


# ---------------------------------------------------------------------------------------------------------
# Training


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(args.seed)
    config = VQVAEConfig(**args.model)
    model = VQVAEModel(config)
    train_set, eval_set, processor, train_collate, eval_collate = build_data(args, config)

    train_loader = DataLoader(
        train_set,
        batch_size=args.per_device_batch_size,
        shuffle=not args.streaming,
        drop_last=True,
        collate_fn=train_collate,
    )
    eval_loader = DataLoader(eval_set, batch_size=args.eval_batch_size, collate_fn=eval_collate)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(
        model, optimizer, train_loader, eval_loader
    )
    state = TrainingState()
    accelerator.register_for_checkpointing(state)
    checkpoints = CheckpointManager(accelerator, output_dir / "checkpoints", args.checkpoints_total_limit)
    if args.resume_from_checkpoint:
        resumed = checkpoints.load(args.resume_from_checkpoint)
        accelerator.print(f"Resumed from {resumed} at step {state.step}")
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers("vqvae", config=_flat_config(args))

    accelerator.print(
        f"Training {config.modality} VQ-VAE: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"K={config.codebook_size}, D={config.codebook_dim}, {accelerator.num_processes} process(es), "
        f"batch {args.per_device_batch_size} x {accelerator.num_processes} x {args.gradient_accumulation_steps}"
    )
    progress = tqdm(
        total=args.max_steps,
        initial=state.step,
        disable=not accelerator.is_local_main_process,
        desc="train",
        dynamic_ncols=True,
    )
    segment_start, seconds_before = time.time(), state.train_seconds
    metrics: dict = {}
    while not _finished(args, state):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(state.epoch)
        batches = (
            accelerator.skip_first_batches(train_loader, state.batch_in_epoch)
            if state.batch_in_epoch
            else train_loader
        )
        for batch in batches:
            learning_rate = args.learning_rate * _lr_factor(args, state)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            with accelerator.accumulate(model):
                output = model(**batch)
                accelerator.backward(output.loss)
                optimizer.step()
                optimizer.zero_grad()
            state.batch_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            # The main process's clock decides for everyone (one broadcast a step), so all ranks stop together.
            elapsed = torch.tensor([seconds_before + time.time() - segment_start], dtype=torch.float64)
            state.train_seconds = float(broadcast(elapsed.to(accelerator.device)).item())
            progress.update(1)
            # Every rank joins this reduction each step, so a NaN on one rank stops all of them together.
            non_finite = accelerator.reduce((~torch.isfinite(output.loss.detach())).float(), reduction="sum")
            if non_finite.item() > 0:
                raise RuntimeError(
                    f"Non-finite loss at step {state.step} (loss={output.loss.item()}); stopping without saving. "
                    "Lower --learning_rate, try --mixed_precision no, or resume from the last checkpoint."
                )
            if state.step % args.log_every == 0 or state.step == args.max_steps:
                logs = {
                    "train/loss": output.loss.item(),
                    "train/reconstruction_loss": output.reconstruction_loss.item(),
                    "train/commitment_loss": output.commitment_loss.item(),
                    "train/perplexity": output.perplexity.item(),
                    "train/codebook_usage": output.codebook_usage.item(),
                    "train/lr": learning_rate,
                }
                progress.set_postfix(loss=f"{logs['train/loss']:.4f}", ppl=f"{logs['train/perplexity']:.0f}")
                accelerator.log(logs, step=state.step)
            if args.eval_every and state.step % args.eval_every == 0 and state.step < args.max_steps:
                metrics = evaluate(
                    accelerator, model, eval_loader, processor, output_dir / "samples", state.step
                )
                accelerator.log(
                    {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                    step=state.step,
                )
                accelerator.print(f"step {state.step}: " + _format_metrics(metrics))
            if args.checkpoint_every and state.step % args.checkpoint_every == 0:
                path = checkpoints.save(state.step)
                if args.push_checkpoints_to_branch and accelerator.is_main_process:
                    _push_checkpoint(args, path)
            if _finished(args, state):
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
    progress.close()

    metrics = evaluate(accelerator, model, eval_loader, processor, output_dir, state.step, final=True)
    metrics.update(
        step=state.step, train_seconds=round(state.train_seconds, 1), num_processes=accelerator.num_processes
    )
    # Every process must hold the same codebook (EMA statistics, k-means and restarts are synchronised).
    codebook = accelerator.unwrap_model(model).quantizer.embed.detach()
    every_codebook = accelerator.gather(codebook[None])
    metrics["codebook_synchronized"] = bool((every_codebook == every_codebook[:1]).all())
    accelerator.log(
        {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=state.step
    )
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_pretrained_atomic(output_dir, unwrapped, processor)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        card = write_model_card(
            output_dir,
            unwrapped.config,
            metrics,
            {**vars(args), "num_parameters": unwrapped.num_parameters()},
        )
        print(f"\nModel, processor and card: {output_dir.resolve()}")
        picture = "reconstructions.png" if unwrapped.config.modality == "image" else "spectrogram.png"
        print(f"Reconstructions:           {(output_dir / picture).resolve()}")
        print(f"Model card:                {card.resolve()}")
        print("Test-set figures:          " + _format_metrics(metrics))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    # After the last collective: a failed push raises on the main process without leaving others waiting.
    if args.push_to_hub and accelerator.is_main_process:
        _push_final(args, output_dir)
    return metrics


def _finished(args, state: TrainingState) -> bool:
    out_of_time = args.max_train_minutes is not None and state.train_seconds >= 60 * args.max_train_minutes
    return state.step >= args.max_steps or out_of_time


def _lr_factor(args, state: TrainingState) -> float:
    """Linear warmup over steps, then constant or cosine over the run's progress.

    Progress is the larger of the step fraction and, with `--max_train_minutes`, the time fraction, so a
    time-limited run still anneals to zero when its time is up. Both live in the checkpointed state.
    """
    if args.warmup_steps and state.step < args.warmup_steps:
        return (state.step + 1) / args.warmup_steps
    if args.lr_schedule != "cosine":
        return 1.0
    progress = (state.step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
    if args.max_train_minutes:
        progress = max(progress, state.train_seconds / (60 * args.max_train_minutes))
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _flat_config(args) -> dict:
    flat = {key: value for key, value in vars(args).items() if isinstance(value, (int, float, str, bool))}
    flat.update(
        {
            f"model.{key}": value
            for key, value in args.model.items()
            if isinstance(value, (int, float, str, bool))
        }
    )
    flat.pop("hub_token", None)
    return flat


def _format_metrics(metrics: dict) -> str:
    keys = ("psnr", "ssim", "si_snr", "mse", "codebook_usage", "perplexity", "tokens_per_second")
    return ", ".join(f"{key}={metrics[key]:.4g}" for key in keys if key in metrics)


def _push_final(args, output_dir: Path) -> None:
    """One commit on main: weights, config, processor, card, metrics and pictures (not checkpoints or logs).

    A failure raises: the run asked for the push, and everything is saved in `output_dir` to push again.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=args.hub_token)
    api.create_repo(args.hub_model_id, private=args.hub_private_repo, exist_ok=True)
    commit = api.upload_folder(
        repo_id=args.hub_model_id,
        folder_path=str(output_dir),
        ignore_patterns=["checkpoints/*", "logs/*", "samples/*", ".*"],
        commit_message=f"Upload tokenizer trained for {args.max_steps} steps",
    )
    print(f"Pushed to {args.hub_model_id} (commit {commit.oid})")


def _push_checkpoint(args, path: Path) -> None:
    """Push every complete local checkpoint to `--push_checkpoints_to_branch`, one folder each.

    Files already on the branch are skipped, so a checkpoint whose push failed goes up with the next one.
    A failure only warns: this runs on the main process alone, and an exception here would leave the
    other processes waiting in their next collective (and a long run should not die for a side upload).
    """
    from huggingface_hub import HfApi

    from vq_tokenizer.checkpointing import list_checkpoints

    branch = args.push_checkpoints_to_branch
    try:
        api = HfApi(token=args.hub_token)
        api.create_repo(args.hub_model_id, private=args.hub_private_repo, exist_ok=True)
        api.create_branch(args.hub_model_id, branch=branch, exist_ok=True)
        api.upload_folder(
            repo_id=args.hub_model_id,
            folder_path=str(path.parent),
            allow_patterns=[f"{checkpoint.name}/*" for checkpoint in list_checkpoints(path.parent)],
            revision=branch,
            commit_message=f"Checkpoint {path.name}",
        )
    except Exception as error:  # noqa: BLE001 - see the docstring
        print(
            f"Warning: could not push {path.name} to branch {branch!r} of {args.hub_model_id} "
            f"({type(error).__name__}: {error}); training goes on and the next checkpoint push retries it.",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
