r"""Train a VQ-VAE tokenizer (images or audio) with Accelerate, on one or many processes.

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

import dataclasses
import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vq_tokenizer import VQVAEConfig, VQVAEModel
from vq_tokenizer.checkpointing import (
    CheckpointManager,
    TrainingState,
    list_checkpoints,
    save_pretrained_atomic,
)
from vq_tokenizer.data import load_split
from vq_tokenizer.evaluation import evaluate
from vq_tokenizer.modalities import modality_for
from vq_tokenizer.model_card import write_model_card
from vq_tokenizer.training import (
    DatasetArguments,
    HubArguments,
    RecipeArgumentParser,
    TrainingClock,
    TrainingSchedule,
    push_folder,
)

# ---------------------------------------------------------------------------------------------------------
# Arguments: a recipe (`--config`) and the command line, which wins


@dataclass
class DataArguments(DatasetArguments):
    audio_column: str | None = field(default=None, metadata={"help": "default: found by name"})
    streaming: bool = field(default=False, metadata={"help": "stream the training split"})
    image_size: int | None = field(default=None, metadata={"help": "resize images to this square size"})
    audio_crop_seconds: float = field(default=1.0, metadata={"help": "training crop length"})


@dataclass
class ModelArguments:
    """Command-line overrides of the recipe's `model:` mapping, which may set any `VQVAEConfig` field."""

    modality: Literal["image", "audio"] | None = None
    quantizer_type: Literal["vq", "gumbel", "rvq", "fsq"] | None = None
    in_channels: int | None = None
    codebook_size: int | None = None
    codebook_dim: int | None = None
    hidden_size: int | None = None
    codebook_update: Literal["ema", "loss"] | None = None
    kmeans_init: bool | None = field(
        default=None, metadata={"nargs": "?", "const": True, "help": "--kmeans_init or --no-kmeans_init"}
    )
    dead_code_threshold: float | None = None

    def config(self, recipe_model: dict) -> VQVAEConfig:
        overrides = {key: value for key, value in dataclasses.asdict(self).items() if value is not None}
        return VQVAEConfig(**{**recipe_model, **overrides})


@dataclass
class RunArguments:
    output_dir: str = field(metadata={"help": "model, processor, card, metrics, pictures, checkpoints, logs"})
    seed: int = 0
    per_device_batch_size: int = 64
    eval_batch_size: int = 256
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float | None = field(default=None, metadata={"help": "clip gradients to this norm"})
    max_steps: int = 1000
    max_train_minutes: float | None = field(
        default=None, metadata={"help": "also stop (and finish the LR schedule) after this long"}
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    num_threads: int | None = field(default=None, metadata={"help": "torch threads per process"})
    eval_every: int = field(default=0, metadata={"help": "0: only at the end"})
    eval_num_quantizers: list[int] | None = field(
        default=None,
        metadata={"help": "audio, final evaluation: level counts to report (default: Q/4, Q/2, Q of an rvq)"},
    )
    log_every: int = 50
    checkpoint_every: int = field(default=0, metadata={"help": "0: no intermediate checkpoints"})
    checkpoints_total_limit: int = 3
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' or a checkpoint folder"}
    )
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard or none"})
    push_checkpoints_to_branch: str | None = field(
        default=None, metadata={"help": "also push each checkpoint to this branch of --hub_model_id"}
    )

    def schedule(self) -> TrainingSchedule:
        return TrainingSchedule(
            self.learning_rate,
            max_steps=self.max_steps,
            max_seconds=None if self.max_train_minutes is None else 60 * self.max_train_minutes,
            warmup_steps=self.warmup_steps,
            decay=self.lr_schedule,
        )


class Arguments(NamedTuple):
    data: DataArguments
    run: RunArguments
    hub: HubArguments
    config: VQVAEConfig

    def as_dict(self) -> dict:
        """Every option's value (what the model card and the trackers are told), the model's apart."""
        return {
            **dataclasses.asdict(self.data),
            **dataclasses.asdict(self.run),
            **dataclasses.asdict(self.hub),
        }


def parse_args(argv: list[str] | None = None) -> Arguments:
    parser = RecipeArgumentParser(
        (DataArguments, ModelArguments, RunArguments, HubArguments), mappings=("model",), description=__doc__
    )
    parser.add_argument(
        "--no-kmeans_init", "--no_kmeans_init", dest="kmeans_init", action="store_false", default=None
    )
    (data, model, run, hub), recipe = parser.parse_recipe_and_args(argv)
    try:
        config = model.config(recipe["model"])
    except (TypeError, ValueError) as error:
        parser.error(f"invalid model settings: {error}")
    return Arguments(data, run, hub, config)


# ---------------------------------------------------------------------------------------------------------
# Data


def build_data(args: DataArguments, config: VQVAEConfig):
    """Datasets, the processor saved beside the model, and collate functions for train and eval.

    The modality (`vq_tokenizer.modalities`) finds the input column, reads it and batches it. Audio training
    takes a fresh random crop of every clip (`--audio_crop_seconds`); evaluation runs on whole clips.
    """
    modality = modality_for(config)
    resize = {"height": args.image_size, "width": args.image_size} if args.image_size else None
    processor = modality.processor_for(config, **({"do_resize": True, "size": resize} if resize else {}))

    def load(split: str, streaming: bool = False):
        return load_split(
            args.dataset_name, split, args.dataset_config, streaming, folder_builder=modality.folder_builder
        )

    train, evaluation = load(args.train_split, args.streaming), load(args.eval_split)
    column_names = list(train.column_names or evaluation.column_names)
    column = modality.find_column(column_names, args.image_column or args.audio_column)
    train, evaluation = modality.prepare_dataset(train, column), modality.prepare_dataset(evaluation, column)
    train_collate = functools.partial(modality.collate_examples, processor, column=column)
    # Evaluation batches also carry each row's group (audio: synthetic / recorded / noise), reported apart.
    eval_collate = functools.partial(modality.collate_examples, processor, column=column, with_groups=True)
    if modality.name == "audio":
        crop = int(args.audio_crop_seconds * config.sampling_rate) // config.hop_length * config.hop_length
        train_collate = functools.partial(random_crops, train_collate, crop)
    if args.max_train_samples:
        train = (
            train.take(args.max_train_samples)
            if args.streaming
            else train.select(range(min(len(train), args.max_train_samples)))
        )
    if args.max_eval_samples:
        evaluation = evaluation.select(range(min(len(evaluation), args.max_eval_samples)))
    return train, evaluation, processor, train_collate, eval_collate


def random_crops(collate, length: int, examples: list[dict]) -> dict[str, torch.Tensor]:
    """`collate(examples)`, each clip cut to `length` samples from a random start within its real samples.

    The starts come from torch's global generator: set_seed seeds it and save_state/load_state restore it,
    so a resumed run goes on with the same crops.
    """
    batch = collate(examples)
    values, mask = batch["input_values"], batch["padding_mask"]
    length = min(length, values.shape[-1])
    starts = [int(torch.randint(0, max(1, int(n) - length + 1), ())) for n in mask.sum(-1)]
    values = torch.stack([v[..., s : s + length] for v, s in zip(values, starts, strict=True)])
    mask = torch.stack([m[s : s + length] for m, s in zip(mask, starts, strict=True)])
    return {"input_values": values, "padding_mask": mask}


# ---------------------------------------------------------------------------------------------------------
# Training


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    accelerator = setup(args.run)
    model, optimizer, train_loader, eval_loader, processor = build_training(args, accelerator)
    state, checkpoints = resume(args.run, accelerator)
    start_logging(args, accelerator, model)
    train(args, accelerator, model, optimizer, train_loader, eval_loader, processor, state, checkpoints)
    metrics = final_evaluation(args.run, accelerator, model, eval_loader, processor, state)
    if accelerator.is_main_process:
        save_outputs(args, accelerator.unwrap_model(model), processor, metrics)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    # After the last collective: a failed push raises on the main process without leaving others waiting.
    if args.hub.push_to_hub and accelerator.is_main_process:
        push_final(args)
    return metrics


def setup(run: RunArguments) -> Accelerator:
    if run.num_threads:
        torch.set_num_threads(run.num_threads)
    output_dir = Path(run.output_dir)
    accelerator = Accelerator(
        mixed_precision=run.mixed_precision,
        gradient_accumulation_steps=run.gradient_accumulation_steps,
        log_with=None if run.report_to == "none" else run.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(run.seed)
    return accelerator


def build_training(args: Arguments, accelerator: Accelerator):
    """The model, its optimizer and both loaders, prepared; and the processor saved beside the model."""
    model = VQVAEModel(args.config)
    train_set, eval_set, processor, train_collate, eval_collate = build_data(args.data, args.config)
    train_loader = DataLoader(
        train_set,
        batch_size=args.run.per_device_batch_size,
        shuffle=not args.data.streaming,
        drop_last=True,
        collate_fn=train_collate,
    )
    eval_loader = DataLoader(eval_set, batch_size=args.run.eval_batch_size, collate_fn=eval_collate)
    run = args.run
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=run.learning_rate,
        betas=(run.adam_beta1, run.adam_beta2),
        weight_decay=run.weight_decay,
    )
    model, optimizer, train_loader, eval_loader = accelerator.prepare(
        model, optimizer, train_loader, eval_loader
    )
    if not args.data.streaming and len(train_loader) == 0:  # every epoch would be empty: a run that never ends
        raise ValueError(
            f"The training split has {len(train_set)} examples, fewer than one batch of "
            f"{run.per_device_batch_size} x {accelerator.num_processes} process(es): lower "
            "--per_device_batch_size or train on more data."
        )
    return model, optimizer, train_loader, eval_loader, processor


def resume(run: RunArguments, accelerator: Accelerator) -> tuple[TrainingState, CheckpointManager]:
    """The loop's state, carried by every checkpoint; loaded from `--resume_from_checkpoint` if given."""
    state = TrainingState()
    accelerator.register_for_checkpointing(state)
    checkpoints = CheckpointManager(
        accelerator, Path(run.output_dir) / "checkpoints", run.checkpoints_total_limit
    )
    if run.resume_from_checkpoint:
        resumed = checkpoints.load(run.resume_from_checkpoint)
        accelerator.print(f"Resumed from {resumed} at step {state.step}")
    return state, checkpoints


def start_logging(args: Arguments, accelerator: Accelerator, model) -> None:
    run, config, processes = args.run, args.config, accelerator.num_processes
    if accelerator.is_main_process and run.report_to != "none":
        hyperparameters = {**args.as_dict(), **{f"model.{k}": v for k, v in config.to_diff_dict().items()}}
        hyperparameters.pop("hub_token")
        accelerator.init_trackers(
            "vqvae",
            config={k: v for k, v in hyperparameters.items() if isinstance(v, (int, float, str, bool))},
        )
    accelerator.print(
        f"Training {config.modality} VQ-VAE: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"K={config.codebook_size}, D={config.codebook_dim}, {processes} process(es), "
        f"batch {run.per_device_batch_size} x {processes} x {run.gradient_accumulation_steps}"
    )


def train(
    args, accelerator, model, optimizer, train_loader, eval_loader, processor, state, checkpoints
) -> None:
    """Optimizer steps until the schedule's budget is spent, logging, evaluating and checkpointing on the way.

    A resumed run goes on from `state`: the same epoch, past the batches it had already trained on.
    """
    run = args.run
    schedule = run.schedule()
    clock = TrainingClock(accelerator, seconds_before=state.train_seconds)
    progress = tqdm(
        total=run.max_steps,
        initial=state.step,
        disable=not accelerator.is_local_main_process,
        desc="train",
        dynamic_ncols=True,
    )
    while not schedule.finished(state.step, state.train_seconds):
        for batch in epoch_batches(accelerator, train_loader, state):
            learning_rate = schedule.apply(optimizer, state.step, state.train_seconds)
            with accelerator.accumulate(model):
                output = model(**batch)
                accelerator.backward(output.loss)
                if run.max_grad_norm is not None and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), run.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            state.batch_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            state.train_seconds = clock.seconds()
            progress.update(1)
            stop_if_not_finite(accelerator, output.loss, state.step)
            if state.step % run.log_every == 0 or state.step == run.max_steps:
                log_step(accelerator, progress, output, learning_rate, state.step)
            if run.eval_every and state.step % run.eval_every == 0 and state.step < run.max_steps:
                with clock.paused():  # the budget and the schedule count training time only
                    metrics = evaluate(
                        accelerator, model, eval_loader, processor, Path(run.output_dir) / "samples", state.step
                    )
                log_metrics(accelerator, metrics, state.step)
                accelerator.print(f"step {state.step}: " + format_metrics(metrics))
            if run.checkpoint_every and state.step % run.checkpoint_every == 0:
                save_checkpoint(args, accelerator, checkpoints, state.step)
            if schedule.finished(state.step, state.train_seconds):
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
    progress.close()


def epoch_batches(accelerator: Accelerator, train_loader, state: TrainingState):
    """The current epoch's batches, in the seeded order, past the `state.batch_in_epoch` already trained on."""
    if hasattr(train_loader, "set_epoch"):
        train_loader.set_epoch(state.epoch)
    if state.batch_in_epoch:
        return accelerator.skip_first_batches(train_loader, state.batch_in_epoch)
    return train_loader


def stop_if_not_finite(accelerator: Accelerator, loss: torch.Tensor, step: int) -> None:
    # Every rank joins this reduction each step, so a NaN on one rank stops all of them together.
    non_finite = accelerator.reduce((~torch.isfinite(loss.detach())).float(), reduction="sum")
    if non_finite.item() > 0:
        raise RuntimeError(
            f"Non-finite loss at step {step} (loss={loss.item()}); stopping without saving. "
            "Lower --learning_rate, try --mixed_precision no, or resume from the last checkpoint."
        )


def log_step(accelerator: Accelerator, progress, output, learning_rate: float, step: int) -> None:
    logs = {
        "train/loss": output.loss.item(),
        "train/reconstruction_loss": output.reconstruction_loss.item(),
        "train/commitment_loss": output.commitment_loss.item(),
        "train/perplexity": output.perplexity.item(),
        "train/codebook_usage": output.codebook_usage.item(),
        "train/lr": learning_rate,
    }
    progress.set_postfix(loss=f"{logs['train/loss']:.4f}", ppl=f"{logs['train/perplexity']:.0f}")
    accelerator.log(logs, step=step)


def log_metrics(accelerator: Accelerator, metrics: dict, step: int) -> None:
    accelerator.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)


def format_metrics(metrics: dict) -> str:
    keys = ("psnr", "ssim", "si_snr", "stoi", "pesq", "mel_l1", "mse", "codebook_usage", "perplexity", "tokens_per_second")
    return ", ".join(f"{key}={metrics[key]:.4g}" for key in keys if key in metrics)


def save_checkpoint(
    args: Arguments, accelerator: Accelerator, checkpoints: CheckpointManager, step: int
) -> None:
    path = checkpoints.save(step)
    if args.run.push_checkpoints_to_branch and accelerator.is_main_process:
        push_checkpoints(args, path)


def final_evaluation(
    run: RunArguments, accelerator: Accelerator, model, eval_loader, processor, state
) -> dict:
    """The test-set figures and pictures (audio: per bitrate and clip group, with decoded examples, all in the
    output folder the card is written to), the run's size and length, and the codebook-equality check."""
    metrics = evaluate(
        accelerator,
        model,
        eval_loader,
        processor,
        run.output_dir,
        state.step,
        final=True,
        num_quantizers=run.eval_num_quantizers,
    )
    metrics.update(
        step=state.step,
        train_seconds=round(state.train_seconds, 1),
        num_processes=accelerator.num_processes,
        codebook_synchronized=codebooks_identical(accelerator, model),
    )
    log_metrics(accelerator, metrics, state.step)
    return metrics


def codebooks_identical(accelerator: Accelerator, model) -> bool:
    """Whether every process holds the same quantizer state, every parameter and buffer of any quantizer type
    (EMA statistics, k-means, restarts and step counters are synchronised)."""
    state = accelerator.unwrap_model(model).quantizer.state_dict()
    if not state:
        return True
    flat = torch.cat([tensor.detach().double().reshape(-1) for _, tensor in sorted(state.items())])
    every_state = accelerator.gather(flat[None])
    return bool((every_state == every_state[:1]).all())


# ---------------------------------------------------------------------------------------------------------
# Outputs (main process)


def save_outputs(args: Arguments, model: VQVAEModel, processor, metrics: dict) -> None:
    """The model and processor (renamed into place), metrics.json and the model card; then where they are."""
    output_dir = Path(args.run.output_dir)
    save_pretrained_atomic(output_dir, model, processor)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    card = write_model_card(
        output_dir, model.config, metrics, {**args.as_dict(), "num_parameters": model.num_parameters()}
    )
    print(f"\nModel, processor and card: {output_dir.resolve()}")
    print(f"Reconstructions:           {(output_dir / modality_for(model.config).picture_name).resolve()}")
    print(f"Model card:                {card.resolve()}")
    print("Test-set figures:          " + format_metrics(metrics))


def push_final(args: Arguments) -> None:
    """One commit on main: weights, config, processor, card, metrics and pictures (not checkpoints or logs).

    A failure raises: the run asked for the push, and everything is saved in `output_dir` to push again.
    """
    commit = push_folder(
        args.hub,
        args.run.output_dir,
        commit_message=f"Upload tokenizer trained for {args.run.max_steps} steps",
        ignore_patterns=["checkpoints/*", "logs/*", "samples/*", ".*"],
    )
    print(f"Pushed to {args.hub.hub_model_id} (commit {commit.oid})")


def push_checkpoints(args: Arguments, path: Path) -> None:
    """Push every complete local checkpoint to `--push_checkpoints_to_branch`, one folder each.

    Files already on the branch are skipped, so a checkpoint whose push failed goes up with the next one.
    A failure only warns: this runs on the main process alone, and an exception here would leave the
    other processes waiting in their next collective (and a long run should not die for a side upload).
    """
    branch = args.run.push_checkpoints_to_branch
    try:
        push_folder(
            args.hub,
            path.parent,
            commit_message=f"Checkpoint {path.name}",
            allow_patterns=[f"{checkpoint.name}/*" for checkpoint in list_checkpoints(path.parent)],
            branch=branch,
        )
    except Exception as error:  # noqa: BLE001 - see the docstring
        print(
            f"Warning: could not push {path.name} to branch {branch!r} of {args.hub.hub_model_id} "
            f"({type(error).__name__}: {error}); training goes on and the next checkpoint push retries it.",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
