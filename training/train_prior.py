"""Train a class-conditional transformers prior (a small Llama) on VQ-VAE codes, then sample new images.

    python training/train_prior.py --config training/configs/prior_fashion_mnist.yaml \
        --tokenizer out/fmnist --output_dir out/prior
    accelerate launch training/train_prior.py --config ... --tokenizer org/vqvae-fashion-mnist --output_dir out/prior
    python training/train_prior.py --config ... --tokenizer out/fmnist --codes_dataset me/fmnist-codes --streaming

The codes come from `--codes_dataset`, a folder or Hub dataset repo written by `vq-tokenizer encode-dataset`
with this very tokenizer (checked against its card; `--streaming` streams the train split, the eval split is
read whole), or else the tokenizer (a folder or Hub repo id) encodes the dataset's two splits once, every process
sharing the work, into `<output_dir>/codes/<key>` in the same layout (reused when current; the key names the
tokenizer, the dataset and the subset). Each sequence is `[class] + codes`: ids 0..num_classes-1 are the class
tokens, the codes sit at `offset = num_classes` ([`CodeTokenMapping`]; a dataset's own `input_ids` are unused). The loss is the negative log-likelihood of each code
under the model's distribution over code ids only (what sampling draws from). At the end: test NLL in bits
per code and bits per dimension (all the codes' bits / pixels per image), a PNG grid of samples (one row per
class) decoded by the tokenizer, and the LM saved with `save_pretrained` beside its `token_mapping.json`.
"""

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import datasets
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from vq_tokenizer import VQVAEModel
from vq_tokenizer.data import load_image_dataset
from vq_tokenizer.dataset_encoding import read_encoding_info, tokenizer_fingerprint, write_encoded_dataset
from vq_tokenizer.modalities import get_modality
from vq_tokenizer.token_mapping import CodeTokenMapping
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
    label_column: str = "label"
    codes_dataset: str | None = field(
        default=None,
        metadata={
            "help": "a folder or Hub dataset repo written by `vq-tokenizer encode-dataset` with --tokenizer: "
            "train on its splits (no encoding here; --dataset_name and --image_column unused)"
        },
    )
    codes_revision: str | None = field(default=None, metadata={"help": "the codes dataset's Hub revision"})
    streaming: bool = field(
        default=False,
        metadata={"help": "stream the train codes (nothing downloaded whole); eval is read whole"},
    )
    codes_dir: str | None = field(
        default=None, metadata={"help": "where this script encodes the dataset; default <output_dir>/codes"}
    )
    encode_batch_size: int = 512


@dataclass
class PriorArguments:
    """The tokenizer, and the LM (a `LlamaConfig`)."""

    tokenizer: str = field(metadata={"help": "VQ-VAE folder or Hub repo id"})
    num_hidden_layers: int = 4
    hidden_size: int = 128
    intermediate_size: int = 512
    num_attention_heads: int = 4
    dropout: float = field(default=0.0, metadata={"help": "attention dropout"})


@dataclass
class RunArguments:
    output_dir: str = field(metadata={"help": "the prior, its token_mapping.json, samples, metrics, codes"})
    seed: int = 0
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int = 2000
    max_train_minutes: float | None = field(default=None, metadata={"help": "stop training after this long"})
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    num_threads: int | None = field(default=None, metadata={"help": "torch threads per process"})
    log_every: int = 100
    # evaluation and sampling
    eval_batch_size: int = 500
    samples_per_class: int = 10
    temperature: float = 1.0
    top_k: int = field(default=0, metadata={"help": "0: sample from the full distribution"})

    def schedule(self) -> TrainingSchedule:
        """Linear warm-up, then cosine to 10% over max_steps or max_train_minutes, whichever binds."""
        return TrainingSchedule(
            self.learning_rate,
            max_steps=self.max_steps,
            max_seconds=None if self.max_train_minutes is None else 60 * self.max_train_minutes,
            warmup_steps=self.warmup_steps,
            final_factor=0.1,
        )


class Arguments(NamedTuple):
    data: DataArguments
    prior: PriorArguments
    run: RunArguments
    hub: HubArguments


def parse_args(argv: list[str] | None = None) -> Arguments:
    parser = RecipeArgumentParser(
        (DataArguments, PriorArguments, RunArguments, HubArguments), description=__doc__
    )
    arguments, _ = parser.parse_recipe_and_args(argv)
    return Arguments(*arguments)


# ---------------------------------------------------------------------------------------------------------
# Data: images -> codes -> `[class] + code ids`


# Rows held by a streamed train split's shuffle buffer.
STREAM_SHUFFLE_BUFFER = 10_000


class PriorData(NamedTuple):
    """The sequences `[class] + code ids`: train in memory (`[N, 1 + h*w]`) or a stream of rows (`codes` and the
    label, turned into sequences by `SequenceBatches`), eval in memory; the mapping, class names and sizes."""

    train: torch.Tensor | datasets.IterableDataset
    eval: torch.Tensor
    num_train: int | None  # None: a stream of unknown length
    mapping: CodeTokenMapping
    class_names: list[str]
    pixels_per_image: int


def load_data(args: Arguments, tokenizer, processor, accelerator) -> PriorData:
    """The codes of `--codes_dataset`, or of the dataset encoded here first."""
    data = args.data
    source, revision = data.codes_dataset, data.codes_revision
    if source is None:
        source, revision = encode_splits(data, args.run.output_dir, tokenizer, processor, accelerator), None
    return load_codes(data, str(source), revision, args.hub.hub_token, tokenizer, processor)


def encode_splits(args: DataArguments, output_dir: str, tokenizer, processor, accelerator) -> Path:
    """Encode the train and eval splits into one folder of parquet shards with a card (`vq-tokenizer
    encode-dataset`'s layout). Every process calls this and encodes its share; a folder holding this very
    encoding is reused as it is, one cut short is finished."""
    splits = {}
    for split, limit in (
        (args.train_split, args.max_train_samples),
        (args.eval_split, args.max_eval_samples),
    ):
        rows = load_image_dataset(args.dataset_name, split, args.dataset_config)
        if limit:
            rows = rows.select(range(min(limit, len(rows))))
        name = args.dataset_name + (f" ({args.dataset_config})" if args.dataset_config else "") + f"[{split}]"
        splits[split] = rows, name + (f", first {limit} rows" if limit else "")
    # One folder per tokenizer, dataset and subset: a later run with other ones never meets these codes.
    identity = [tokenizer_fingerprint(tokenizer, processor), sorted(name for _, name in splits.values())]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    folder = Path(args.codes_dir or Path(output_dir) / "codes") / key
    for split, (rows, name) in splits.items():
        write_encoded_dataset(
            tokenizer,
            processor,
            rows,
            folder,
            split=split,
            column=get_modality("image").find_column(rows.column_names, args.image_column),
            keep_columns=[args.label_column],
            batch_size=args.encode_batch_size,
            accelerator=accelerator,
            source_name=name,
            desc=f"Encoding {split}",
        )
    return folder


def load_codes(args: DataArguments, source: str, revision, token, tokenizer, processor) -> PriorData:
    """A folder or Hub dataset repo of `encode-dataset`, checked to hold codes of `tokenizer`."""
    info = read_encoding_info(source, revision=revision, token=token)
    if info.tokenizer_fingerprint != tokenizer_fingerprint(tokenizer, processor):
        raise ValueError(
            f"{source} holds codes of another tokenizer ({info.tokenizer or 'unnamed'}) than --tokenizer "
            f"{tokenizer.config.name_or_path}: their weights, config or processor differ. Pass the tokenizer "
            f"the codes were made with, or encode the dataset with this one (`vq-tokenizer encode-dataset "
            f"--model {tokenizer.config.name_or_path} ...`)."
        )
    label = args.label_column
    eval_rows = datasets.load_dataset(source, split=args.eval_split, revision=revision, token=token)
    eval_rows = _first(eval_rows, args.max_eval_samples)
    if {"codes", label} - set(eval_rows.column_names):
        raise ValueError(
            f"{source} has columns {eval_rows.column_names}: no `codes` or no label column {label!r} "
            "(pass --label_column)."
        )
    train_rows = datasets.load_dataset(
        source, split=args.train_split, revision=revision, token=token, streaming=args.streaming
    )
    train_rows = _first(train_rows.select_columns(["codes", label]), args.max_train_samples)
    class_names = list(getattr(eval_rows.features[label], "names", None) or [])
    if not class_names:  # plain integers 0..C-1
        if args.streaming:
            raise ValueError(
                f"Streamed, the label column {label!r} must be a ClassLabel (its card names the classes)."
            )
        class_names = [str(value) for value in sorted(set(train_rows[label]))]
    # The code grid (a residual quantizer's codes carry the level axis first: `[Q, h, w]`).
    grid = tuple(torch.as_tensor(eval_rows[0]["codes"]).shape)[-tokenizer.config.spatial_dims :]
    mapping = CodeTokenMapping.from_config(tokenizer.config, grid_shape=grid, offset=len(class_names))
    to_sequences = SequenceBatches(mapping, label)
    if args.streaming:
        train, num_train = train_rows, info.splits.get(args.train_split)
        if num_train is not None and args.max_train_samples:
            num_train = min(num_train, args.max_train_samples)
    else:
        train = to_sequences.of_columns(train_rows)
        num_train = len(train)
    config = tokenizer.config
    return PriorData(
        train=train,
        eval=to_sequences.of_columns(eval_rows),
        num_train=num_train,
        mapping=mapping,
        class_names=class_names,
        pixels_per_image=config.in_channels * math.prod(grid) * config.downsampling_factor ** len(grid),
    )


def _first(rows, limit: int | None):
    if not limit:
        return rows
    if isinstance(rows, datasets.IterableDataset):
        return rows.take(limit)
    return rows.select(range(min(limit, len(rows))))


class SequenceBatches:
    """Rows of `codes` and a label -> `input_ids` `[B, 1 + h*w]` = `[label] + mapping.codes_to_ids(codes)`; as a
    DataLoader's `collate_fn`, a batch `(input_ids,)` like those of the in-memory `TensorDataset`."""

    def __init__(self, mapping: CodeTokenMapping, label_column: str):
        self.mapping, self.label_column = mapping, label_column

    def sequences(self, codes, labels) -> torch.Tensor:
        labels = torch.as_tensor(labels).long()
        return torch.cat([labels[:, None], self.mapping.codes_to_ids(codes)], dim=1)

    def of_columns(self, rows: datasets.Dataset) -> torch.Tensor:
        columns = rows.with_format("torch", columns=["codes", self.label_column])[:]
        return self.sequences(columns["codes"], columns[self.label_column])

    def __call__(self, rows: list[dict]) -> tuple[torch.Tensor]:
        codes = torch.tensor([row["codes"] for row in rows])
        return (self.sequences(codes, [row[self.label_column] for row in rows]),)


def train_loader_for(data: PriorData, run: RunArguments, label_column: str, accelerator) -> DataLoader:
    """Shuffled full batches: of the in-memory sequences (prepared: each process takes its share of every
    batch), or of the stream, which `split_dataset_by_node` shares between the processes (whole shards when
    they divide evenly, else every N-th row). Not prepared: accelerate would otherwise hand each process a
    slice of the main process's batches."""
    if isinstance(data.train, torch.Tensor):
        loader = DataLoader(
            TensorDataset(data.train), batch_size=run.batch_size, shuffle=True, drop_last=True
        )
        return accelerator.prepare(loader)
    stream = data.train.shuffle(seed=run.seed, buffer_size=STREAM_SHUFFLE_BUFFER)
    stream = split_dataset_by_node(
        stream, rank=accelerator.process_index, world_size=accelerator.num_processes
    )
    return DataLoader(
        stream,
        batch_size=run.batch_size,
        drop_last=True,
        collate_fn=SequenceBatches(data.mapping, label_column),
    )


def code_nll(model, input_ids: torch.Tensor, mapping: CodeTokenMapping) -> torch.Tensor:
    """NLL (nats) of every code given the class and the codes before it, over code ids only: `[B, h*w*Q]`.

    With levels (a residual quantizer), each position's Q codes follow one another and the code at sequence
    position `i` is over its level's K ids only (level `i % Q`)."""
    first, end = mapping.image_token_range
    logits = model(input_ids=input_ids[:, :-1]).logits[..., first:end].float()
    targets = input_ids[:, 1:] - first
    levels, size = mapping.num_levels, mapping.codebook_size
    if levels > 1:
        level = torch.arange(targets.shape[1], device=targets.device) % levels
        logits = logits.unflatten(-1, (levels, size))[:, torch.arange(targets.shape[1]), level]
        targets = targets - level * size
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


@torch.no_grad()
def evaluate(model, loader, mapping, accelerator) -> tuple[float, list[float]]:
    """Mean NLL per code (nats) over the whole eval set, and that of each level's codes (one entry without
    levels), every sequence counted once on any number of processes (`gather_for_metrics` drops the
    duplicates that even out the last batch)."""
    model.eval()
    per_sequence = []
    levels = mapping.num_levels
    for (input_ids,) in loader:
        nll = code_nll(model, input_ids, mapping).double()  # [B, h*w*Q]: position-major, level-minor
        per_level = nll.unflatten(1, (-1, levels)).mean(dim=1)  # [B, Q]
        per_sequence.append(accelerator.gather_for_metrics(per_level).cpu())
    model.train()
    per_level = torch.cat(per_sequence).mean(dim=0)
    return float(per_level.mean()), per_level.tolist()


# ---------------------------------------------------------------------------------------------------------
# Sampling


@torch.no_grad()
def sample_images(model, tokenizer, processor, mapping, num_classes, per_class, temperature, top_k):
    """`per_class` samples of every class: (ids `[C * n, 1 + h*w]`, images `[C * n, channels, H, W]` in [0, 1])."""
    model.eval()
    device = next(model.parameters()).device
    prompts = torch.arange(num_classes, device=device).repeat_interleave(per_class)[:, None]
    length = mapping.num_codes_per_item
    generated = model.generate(
        input_ids=prompts,
        attention_mask=torch.ones_like(prompts),
        do_sample=True,
        temperature=temperature,
        top_k=top_k,
        max_new_tokens=length,
        min_new_tokens=length,
        logits_processor=LogitsProcessorList([mapping.logits_processor(prompt_length=prompts.shape[1])]),
    )
    codes = mapping.ids_to_codes(generated[:, 1:]).to(tokenizer.device)
    images = processor.postprocess(tokenizer.decode(codes).reconstruction, output_type="pt")
    return generated.cpu(), images.cpu()


def save_sample_grid(images: torch.Tensor, class_names: list[str], path: Path) -> Path:
    """One row per class (its name on the left), images `[C * n, channels, H, W]` in [0, 1]."""
    from PIL import Image, ImageDraw

    rows = len(class_names)
    per_row = images.shape[0] // rows
    height, width = images.shape[-2:]
    scale = max(1, 64 // max(height, width))
    label_width = 110
    canvas = Image.new("RGB", (label_width + per_row * width * scale, rows * height * scale), "white")
    draw = ImageDraw.Draw(canvas)
    for index, image in enumerate(images):
        row, col = divmod(index, per_row)
        array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        tile = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).convert("RGB")
        tile = tile.resize((width * scale, height * scale), Image.NEAREST)
        canvas.paste(tile, (label_width + col * width * scale, row * height * scale))
    for row, name in enumerate(class_names):
        draw.text((4, row * height * scale + height * scale // 2 - 6), name, fill="black")
    canvas.save(path)
    return path


# ---------------------------------------------------------------------------------------------------------
# Training


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.time()
    accelerator = setup(args.run)
    tokenizer, processor = load_tokenizer(args, accelerator)
    data = load_data(args, tokenizer, processor, accelerator)
    mapping, class_names = data.mapping, data.class_names
    set_seed(args.run.seed)  # here, so that the run does not depend on whether the codes were encoded first
    model = build_prior(args.prior, mapping, class_names, sequence_length=data.eval.shape[1])
    optimizer = build_optimizer(args.run, model)
    train_loader = train_loader_for(data, args.run, args.data.label_column, accelerator)
    eval_loader = DataLoader(TensorDataset(data.eval), batch_size=args.run.eval_batch_size)
    model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
    levels = mapping.num_levels
    code_ids = f"{mapping.codebook_size} codes" + (f" x {levels} levels" if levels > 1 else "")
    accelerator.print(
        f"Prior: {accelerator.unwrap_model(model).num_parameters():,} parameters, vocab "
        f"{mapping.min_vocab_size} ({len(class_names)} classes + {code_ids}), "
        f"{mapping.num_codes_per_item} codes per image, "
        f"{data.num_train or 'streamed'} train / {len(data.eval)} eval sequences"
    )
    step, train_seconds, loss_history = train(args.run, accelerator, model, optimizer, train_loader, mapping)
    nll, level_nll = evaluate(model, eval_loader, mapping, accelerator)
    metrics = figures(nll, level_nll, data, step, train_seconds, loss_history)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_outputs(args.run, unwrapped, tokenizer, processor, mapping, class_names)
        metrics.update(
            total_seconds=round(time.time() - started, 1), num_parameters=unwrapped.num_parameters()
        )
        (Path(args.run.output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if args.hub.push_to_hub:
            push_prior(args, step)
        print_summary(args.run.output_dir, metrics)
    accelerator.wait_for_everyone()
    return metrics


def setup(run: RunArguments) -> Accelerator:
    if run.num_threads:
        torch.set_num_threads(run.num_threads)
    Path(run.output_dir).mkdir(parents=True, exist_ok=True)
    return Accelerator(mixed_precision=run.mixed_precision)


def load_tokenizer(args: Arguments, accelerator: Accelerator):
    """The VQ-VAE (eval mode, on this process's device) and its image processor."""
    name, token = args.prior.tokenizer, args.hub.hub_token
    tokenizer = VQVAEModel.from_pretrained(name, token=token).to(accelerator.device).eval()
    processor = AutoImageProcessor.from_pretrained(name, token=token)
    if tokenizer.config.modality != "image":
        raise SystemExit("train_prior.py samples images; pass an image tokenizer (modality='image').")
    return tokenizer, processor


def build_prior(
    args: PriorArguments, mapping: CodeTokenMapping, class_names: list[str], sequence_length: int
) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=mapping.min_vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_attention_heads,
        max_position_embeddings=sequence_length,
        attention_dropout=args.dropout,
        # Ids 0..num_classes-1 are class tokens: no bos/eos/pad may alias them.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        # Recorded in config.json so the saved prior says what its ids mean.
        class_names=class_names,
        vq_tokenizer=args.tokenizer,
    )
    return LlamaForCausalLM(config)


def build_optimizer(run: RunArguments, model) -> torch.optim.AdamW:
    """AdamW, with weight decay on the matrices only (not on embeddings, norms or biases)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": run.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=run.learning_rate,
        betas=(0.9, 0.95),
    )


def train(run: RunArguments, accelerator, model, optimizer, train_loader, mapping) -> tuple[int, float, list]:
    """Steps until max_steps or max_train_minutes, whichever comes first: (steps, seconds, loss history).

    Elapsed time is the main process's, so every process takes the same learning rate and stops at the
    same step (processes whose share of a stream differs in length start their next pass at different steps).
    """
    schedule = run.schedule()
    clock = TrainingClock(accelerator)
    step, seconds, loss_history = 0, 0.0, []
    progress = tqdm(total=run.max_steps, disable=not accelerator.is_local_main_process, desc="prior")
    epoch = 0
    while not schedule.finished(step, seconds):
        if isinstance(train_loader.dataset, datasets.IterableDataset):
            train_loader.dataset.set_epoch(epoch)  # another shuffle of the stream each pass
        epoch_start = step
        for (input_ids,) in train_loader:
            input_ids = input_ids.to(accelerator.device)
            schedule.apply(optimizer, step, seconds)
            loss = code_nll(model, input_ids, mapping).mean()
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            progress.update(1)
            if step % run.log_every == 0 or step == 1:
                value = accelerator.reduce(loss.detach(), reduction="mean").item() / math.log(2)
                loss_history.append([step, round(value, 4)])
                progress.set_postfix(bits_per_code=f"{value:.3f}")
            seconds = clock.seconds()
            if schedule.finished(step, seconds):
                break
        if step == epoch_start:
            raise ValueError(
                f"The train split gives this process no full batch of --batch_size {run.batch_size}; pass a "
                "smaller batch size or more rows."
            )
        epoch += 1
    progress.close()
    return step, seconds, loss_history


def figures(nll, level_nll, data: PriorData, step, train_seconds, loss_history) -> dict:
    """Test NLL in bits per code and per dimension (all the codes' bits over the pixels), per level (a residual
    quantizer's codes; one entry otherwise), and the run's size."""
    mapping, pixels_per_image = data.mapping, data.pixels_per_image
    bits_per_code = nll / math.log(2)
    codes_per_image = mapping.num_codes_per_item
    return {
        "eval_bits_per_code": bits_per_code,
        "eval_bits_per_dim": bits_per_code * codes_per_image / pixels_per_image,
        "eval_nll_nats_per_code": nll,
        "eval_bits_per_code_per_level": [value / math.log(2) for value in level_nll],
        "num_levels": mapping.num_levels,
        "uniform_bits_per_code": math.log2(mapping.codebook_size),
        "codes_per_image": codes_per_image,
        "pixels_per_image": pixels_per_image,
        "num_eval_sequences": len(data.eval),
        "num_train_sequences": data.num_train,
        "step": step,
        "train_seconds": round(train_seconds, 1),
        "loss_history_bits_per_code": loss_history,
    }


# ---------------------------------------------------------------------------------------------------------
# Outputs (main process)


def save_outputs(run: RunArguments, model, tokenizer, processor, mapping, class_names: list[str]) -> None:
    """Samples (a grid and their ids), the LM with a generation config that samples whole images, its mapping."""
    output_dir = Path(run.output_dir)
    ids, images = sample_images(
        model,
        tokenizer,
        processor,
        mapping,
        len(class_names),
        run.samples_per_class,
        run.temperature,
        run.top_k,
    )
    save_sample_grid(images, class_names, output_dir / "samples.png")
    torch.save(ids, output_dir / "sample_ids.pt")
    length = mapping.num_codes_per_item
    model.generation_config.update(do_sample=True, max_new_tokens=length, min_new_tokens=length, top_k=0)
    model.save_pretrained(output_dir)
    mapping.save_pretrained(output_dir)


def push_prior(args: Arguments, step: int) -> None:
    """One commit: the LM, its mapping, samples and metrics (not the encoded splits)."""
    push_folder(
        args.hub,
        args.run.output_dir,
        commit_message=f"Upload prior trained for {step} steps",
        ignore_patterns=["codes/*", "sample_ids.pt", ".*"],
    )
    print(f"Pushed to {args.hub.hub_model_id}")


def print_summary(output_dir: str, metrics: dict) -> None:
    output_dir = Path(output_dir)
    print(f"\nPrior, config and token_mapping.json: {output_dir.resolve()}")
    print(f"Samples (one row per class):         {(output_dir / 'samples.png').resolve()}")
    print(
        f"Test NLL: {metrics['eval_bits_per_code']:.4f} bits/code, {metrics['eval_bits_per_dim']:.4f} bits/dim "
        f"(uniform {metrics['uniform_bits_per_code']:.3f} bits/code); {metrics['step']} steps in "
        f"{metrics['train_seconds']:.0f} s, {metrics['total_seconds']:.0f} s in all"
    )
    if metrics["num_levels"] > 1:
        levels = ", ".join(f"{bits:.4f}" for bits in metrics["eval_bits_per_code_per_level"])
        print(f"Test NLL per level (bits/code, coarse to fine): {levels}")


if __name__ == "__main__":
    main(sys.argv[1:])
