"""Train a class-conditional transformers prior (a small Llama) on VQ-VAE codes, then sample new images.

    python training/train_prior.py --config training/configs/prior_fashion_mnist.yaml \
        --tokenizer out/fmnist --output_dir out/prior
    accelerate launch training/train_prior.py --config ... --tokenizer org/vqvae-fashion-mnist --output_dir out/prior

The tokenizer (a folder or Hub repo id) encodes the dataset once into `<output_dir>/codes/<split>` (reused
when current). Each sequence is `[class] + codes`: ids 0..num_classes-1 are the class tokens, the codes sit
at `offset = num_classes` ([`CodeTokenMapping`]). The loss is the negative log-likelihood of each code
under the model's distribution over code ids only (what sampling draws from). At the end: test NLL in bits
per code and bits per dimension (all the codes' bits / pixels per image), a PNG grid of samples (one row per
class) decoded by the tokenizer, and the LM saved with `save_pretrained` beside its `token_mapping.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast, set_seed
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from vq_tokenizer import VQVAEModel
from vq_tokenizer.data import IMAGE_COLUMN_CANDIDATES, find_column, load_image_dataset
from vq_tokenizer.prior import CodeTokenMapping, encode_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML recipe whose keys are these options")
    parser.add_argument("--tokenizer", required=True, help="VQ-VAE folder or Hub repo id")
    parser.add_argument("--output_dir", required=True)
    # data
    parser.add_argument("--dataset_name", default="fashion_mnist")
    parser.add_argument("--dataset_config", default=None)
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--eval_split", default="test")
    parser.add_argument("--image_column", default=None)
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument(
        "--codes_dir", default=None, help="where encoded splits live; default <output_dir>/codes"
    )
    parser.add_argument("--encode_batch_size", type=int, default=512)
    # the LM (a LlamaConfig)
    parser.add_argument("--num_hidden_layers", type=int, default=4)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--intermediate_size", type=int, default=512)
    parser.add_argument("--num_attention_heads", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.0, help="attention dropout")
    # optimisation
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--max_steps", type=int, default=2000)
    parser.add_argument("--max_train_minutes", type=float, default=None, help="stop training after this long")
    parser.add_argument("--mixed_precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--num_threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--log_every", type=int, default=100)
    # evaluation and sampling
    parser.add_argument("--eval_batch_size", type=int, default=500)
    parser.add_argument("--samples_per_class", type=int, default=10)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0, help="0: sample from the full distribution")
    # outputs
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None)
    parser.add_argument("--hub_private_repo", action="store_true")

    known, _ = parser.parse_known_args(argv)
    if known.config:
        recipe = yaml.safe_load(Path(known.config).read_text()) or {}
        unknown = sorted(set(recipe) - {action.dest for action in parser._actions})
        if unknown:
            parser.error(f"unknown keys in {known.config}: {unknown}")
        parser.set_defaults(**recipe)
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (e.g. me/prior-fashion-mnist)")
    return args


# ---------------------------------------------------------------------------------------------------------
# Data: images -> codes -> `[class] + code ids`


def load_sequences(args, tokenizer, processor, accelerator):
    """Encoded splits as `input_ids` `[N, 1 + h*w]` tensors, with the mapping and the class names."""
    codes_dir = Path(args.codes_dir or Path(args.output_dir) / "codes")
    raw = {
        "train": load_image_dataset(args.dataset_name, args.train_split, args.dataset_config),
        "eval": load_image_dataset(args.dataset_name, args.eval_split, args.dataset_config),
    }
    limits = {"train": args.max_train_samples, "eval": args.max_eval_samples}
    for name, limit in limits.items():
        if limit:
            raw[name] = raw[name].select(range(min(limit, len(raw[name]))))
    column = find_column(raw["train"].column_names, IMAGE_COLUMN_CANDIDATES, "image", args.image_column)
    label_feature = raw["train"].features[args.label_column]
    class_names = list(getattr(label_feature, "names", None) or [])
    if not class_names:
        class_names = [str(label) for label in sorted(set(raw["train"][args.label_column]))]
    pixels = processor([raw["train"][0][column]], return_tensors="pt").pixel_values
    mapping = CodeTokenMapping.from_config(
        tokenizer.config, input_size=pixels.shape[2:], offset=len(class_names)
    )
    sequences = {}
    for name, split in (("train", args.train_split), ("eval", args.eval_split)):
        with accelerator.main_process_first():  # the main process encodes; the others then reuse its output
            encoded = encode_dataset(
                tokenizer,
                processor,
                raw[name],
                image_column=column,
                batch_size=args.encode_batch_size,
                mapping=mapping,
                output_dir=codes_dir / f"{split}-{len(raw[name])}",
                desc=f"Encoding {split}",
            )
        columns = encoded.with_format("torch", columns=["input_ids", args.label_column])[:]
        labels, ids = columns[args.label_column].long(), columns["input_ids"].long()
        sequences[name] = torch.cat([labels[:, None], ids], dim=1)
    pixels_per_image = int(math.prod(pixels.shape[1:]))
    return sequences, mapping, class_names, pixels_per_image


def code_nll(model, input_ids: torch.Tensor, mapping: CodeTokenMapping) -> torch.Tensor:
    """NLL (nats) of every code given the class and the codes before it, over code ids only: `[B, h*w]`."""
    first, end = mapping.image_token_range
    logits = model(input_ids=input_ids[:, :-1]).logits[..., first:end].float()
    targets = input_ids[:, 1:] - first
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


@torch.no_grad()
def evaluate(model, loader, mapping, accelerator) -> float:
    """Mean NLL per code (nats) over the whole eval set, every sequence counted once on any number of
    processes (`gather_for_metrics` drops the duplicates that even out the last batch)."""
    model.eval()
    per_sequence = []
    for (input_ids,) in loader:
        nll = code_nll(model, input_ids, mapping).double()
        per_sequence.append(accelerator.gather_for_metrics(nll.mean(dim=1)).cpu())
    model.train()
    return float(torch.cat(per_sequence).mean())


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
        logits_processor=LogitsProcessorList([mapping.logits_processor()]),
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
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)

    tokenizer = VQVAEModel.from_pretrained(args.tokenizer, token=args.hub_token).to(accelerator.device).eval()
    processor = AutoImageProcessor.from_pretrained(args.tokenizer, token=args.hub_token)
    if tokenizer.config.modality != "image":
        raise SystemExit("train_prior.py samples images; pass an image tokenizer (modality='image').")
    sequences, mapping, class_names, pixels_per_image = load_sequences(
        args, tokenizer, processor, accelerator
    )
    num_classes = len(class_names)

    config = LlamaConfig(
        vocab_size=mapping.min_vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_attention_heads,
        max_position_embeddings=sequences["train"].shape[1],
        attention_dropout=args.dropout,
        # Ids 0..num_classes-1 are class tokens: no bos/eos/pad may alias them.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        # Recorded in config.json so the saved prior says what its ids mean.
        class_names=class_names,
        vq_tokenizer=args.tokenizer,
    )
    model = LlamaForCausalLM(config)
    train_loader = DataLoader(
        TensorDataset(sequences["train"]), batch_size=args.batch_size, shuffle=True, drop_last=True
    )
    eval_loader = DataLoader(TensorDataset(sequences["eval"]), batch_size=args.eval_batch_size)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
        betas=(0.9, 0.95),
    )

    model, optimizer, train_loader, eval_loader = accelerator.prepare(
        model, optimizer, train_loader, eval_loader
    )
    codes_per_image = mapping.num_codes_per_item
    accelerator.print(
        f"Prior: {accelerator.unwrap_model(model).num_parameters():,} parameters, vocab {config.vocab_size} "
        f"({num_classes} classes + {mapping.codebook_size} codes), {codes_per_image} codes per image, "
        f"{len(sequences['train'])} train / {len(sequences['eval'])} eval sequences"
    )

    # The budget is max_steps or max_train_minutes, whichever runs out first; the learning rate follows the
    # one that binds (linear warm-up, cosine to 10%). Elapsed time is the main process's, so every process
    # takes the same learning rate and stops at the same step.
    budget_seconds = args.max_train_minutes * 60 if args.max_train_minutes else math.inf
    step, done, loss_history = 0, 0.0, []
    progress = tqdm(total=args.max_steps, disable=not accelerator.is_local_main_process, desc="prior")
    train_started = time.time()
    while done < 1.0:
        for (input_ids,) in train_loader:
            warmup = min(1.0, (step + 1) / args.warmup_steps) if args.warmup_steps else 1.0
            for group in optimizer.param_groups:
                group["lr"] = args.learning_rate * warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * done)))
            loss = code_nll(model, input_ids, mapping).mean()
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            progress.update(1)
            if step % args.log_every == 0 or step == 1:
                value = accelerator.reduce(loss.detach(), reduction="mean").item() / math.log(2)
                loss_history.append([step, round(value, 4)])
                progress.set_postfix(bits_per_code=f"{value:.3f}")
            elapsed = broadcast(torch.tensor([time.time() - train_started], device=accelerator.device)).item()
            done = min(1.0, max(step / args.max_steps, elapsed / budget_seconds))
            if done >= 1.0:
                break
    progress.close()
    train_seconds = time.time() - train_started

    nll = evaluate(model, eval_loader, mapping, accelerator)
    bits_per_code = nll / math.log(2)
    metrics = {
        "eval_bits_per_code": bits_per_code,
        "eval_bits_per_dim": bits_per_code * codes_per_image / pixels_per_image,
        "eval_nll_nats_per_code": nll,
        "uniform_bits_per_code": math.log2(mapping.codebook_size),
        "codes_per_image": codes_per_image,
        "pixels_per_image": pixels_per_image,
        "num_eval_sequences": len(sequences["eval"]),
        "num_train_sequences": len(sequences["train"]),
        "step": step,
        "train_seconds": round(train_seconds, 1),
        "loss_history_bits_per_code": loss_history,
    }
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        ids, images = sample_images(
            unwrapped, tokenizer, processor, mapping, num_classes, args.samples_per_class, args.temperature,
            args.top_k,
        )  # fmt: skip
        save_sample_grid(images, class_names, output_dir / "samples.png")
        unwrapped.generation_config.update(
            do_sample=True, max_new_tokens=codes_per_image, min_new_tokens=codes_per_image, top_k=0
        )
        unwrapped.save_pretrained(output_dir)
        mapping.save_pretrained(output_dir)
        metrics["total_seconds"] = round(time.time() - started, 1)
        metrics["num_parameters"] = unwrapped.num_parameters()
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        torch.save(ids, output_dir / "sample_ids.pt")
        if args.push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi(token=args.hub_token)
            api.create_repo(args.hub_model_id, private=args.hub_private_repo, exist_ok=True)
            api.upload_folder(
                repo_id=args.hub_model_id,
                folder_path=str(output_dir),
                ignore_patterns=["codes/*", "sample_ids.pt", ".*"],
                commit_message=f"Upload prior trained for {step} steps",
            )
            print(f"Pushed to {args.hub_model_id}")
        print(f"\nPrior, config and token_mapping.json: {output_dir.resolve()}")
        print(f"Samples (one row per class):         {(output_dir / 'samples.png').resolve()}")
        print(
            f"Test NLL: {bits_per_code:.4f} bits/code, {metrics['eval_bits_per_dim']:.4f} bits/dim "
            f"(uniform {metrics['uniform_bits_per_code']:.3f} bits/code); {step} steps in {train_seconds:.0f} s, "
            f"{metrics['total_seconds']:.0f} s in all"
        )
    accelerator.wait_for_everyone()
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
