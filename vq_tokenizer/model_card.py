"""Model cards for trained tokenizers: YAML metadata the Hub validates, figures from the run, a snippet that runs."""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .modalities import modality_for

TEMPLATE = "model_card.md"
# metric key -> (display name, Hub metric type, digits)
_METRICS = {
    "psnr": ("PSNR (dB, data range 1)", "psnr", 2),
    "ssim": ("SSIM", "ssim", 4),
    "mse": ("MSE ([0, 1] pixels)", "mse", 5),
    "si_snr": ("SI-SNR (dB)", "si-snr", 2),
    "stoi": ("STOI", "stoi", 3),
    "pesq": ("PESQ (wideband)", "pesq", 3),
    "mel_l1": ("log-mel L1", "mel-l1", 3),
    "codebook_usage": ("codebook usage", "codebook_usage", 4),
    "perplexity": ("perplexity", "perplexity", 1),
}


# Command-line options whose value is a secret: the card shows the option, never the value.
_SECRET_OPTION = re.compile(r"^--?[\w-]*(token|password|secret)[\w-]*$", re.IGNORECASE)
REDACTED = "<redacted>"


def redact_command(argv: Sequence[str], secrets: Sequence[str] = ()) -> str:
    """`argv` as one shell line, with the values of `--hub_token`-like options and any of `secrets` masked."""
    shown, hide_next = [], False
    for part in map(str, argv):
        option, equals, _ = part.partition("=")
        if hide_next:
            text, hide_next = REDACTED, False
        elif equals and _SECRET_OPTION.match(option):
            text = f"{shlex.quote(option)}={REDACTED}"
        else:
            hide_next = bool(_SECRET_OPTION.match(part))
            text = shlex.quote(part)
        for secret in secrets:
            if secret:
                text = text.replace(secret, REDACTED)
        shown.append(text)
    return " ".join(shown)


def template_path() -> Path:
    """The card template shipped with the package (also at `model_cards/TEMPLATE.md` in the repository)."""
    return Path(str(resources.files("vq_tokenizer") / "templates" / TEMPLATE))


def build_model_card(config, metrics: dict, training_args: dict, repo_id: str | None = None) -> ModelCard:
    """Render the card for a tokenizer with `config`, evaluated to `metrics`, trained with `training_args`."""
    dataset_name = str(training_args.get("dataset_name", "unknown"))
    hub_dataset = (
        "zalando-datasets/fashion_mnist" if dataset_name in ("fashion_mnist", "fashion-mnist") else None
    )
    if hub_dataset is None and "/" in dataset_name and not os.path.exists(dataset_name):
        hub_dataset = dataset_name
    eval_split = str(training_args.get("eval_split", "test"))
    model_name = (
        repo_id or training_args.get("hub_model_id") or f"vqvae-{config.modality}-{Path(dataset_name).name}"
    )
    modality = modality_for(config)
    eval_results = [
        EvalResult(
            task_type=modality.hub_task,
            dataset_type=hub_dataset or Path(dataset_name).name,
            dataset_name=Path(dataset_name).name,
            dataset_split=eval_split,
            metric_type=metric_type,
            metric_name=display,
            metric_value=round(float(metrics[key]), digits),
        )
        for key, (display, metric_type, digits) in _METRICS.items()
        if _finite(metrics.get(key))
    ]
    card_data = ModelCardData(
        library_name="vq_tokenizer",
        license="apache-2.0",
        # No pipeline_tag: no Hub task fits a tokenizer, and the built-in pipeline of the nearest one would
        # return the model's loss. The package's own pipelines are named in the tags and the usage snippet.
        tags=[
            "vq-vae",
            "tokenizer",
            config.modality,
            "vector-quantization",
            "vq_tokenizer",
            "vq-tokenization",
        ],
        datasets=[hub_dataset] if hub_dataset else None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    load_id = repo_id or training_args.get("hub_model_id") or training_args.get("output_dir", "path/to/model")
    output_dir = training_args.get("output_dir")
    details = modality.card_details(config, metrics, load_id, output_dir)
    picture, caption = modality.picture_name, modality.picture_caption
    has = lambda name: bool(output_dir) and (Path(output_dir) / name).exists()  # noqa: E731
    rows = [
        (display, f"{float(metrics[key]):.{digits}f}")
        for key, (display, _, digits) in _METRICS.items()
        if _finite(metrics.get(key))
    ]
    secrets = [
        value for key, value in training_args.items() if key.endswith("token") and isinstance(value, str)
    ]
    command = training_args.get("command")
    command = redact_command(shlex.split(command) if command else sys.argv, secrets)
    code_usage, perplexity = metrics.get("codebook_usage"), metrics.get("perplexity")
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        model_name=model_name,
        modality=config.modality,
        in_channels=config.in_channels,
        codebook_size=config.codebook_size,
        codebook_dim=config.codebook_dim,
        lookup_dim=config.lookup_dim,
        codebook_update=config.codebook_update,
        quantizer_description=_quantizer_description(config),
        downsampling_factor=config.downsampling_factor,
        sampling_rate=config.sampling_rate,
        **details,
        num_parameters=f"{training_args.get('num_parameters', 0):,}"
        if training_args.get("num_parameters")
        else "see config",
        dataset_name=dataset_name,
        train_split=training_args.get("train_split", "train"),
        eval_split=eval_split,
        max_steps=metrics.get("step", training_args.get("max_steps")),
        batch_size=training_args.get("per_device_batch_size"),
        num_processes=metrics.get("num_processes", 1),
        learning_rate=training_args.get("learning_rate"),
        mixed_precision=training_args.get("mixed_precision", "no"),
        seed=training_args.get("seed"),
        train_seconds=metrics.get("train_seconds", "n/a"),
        command=command,
        num_eval_items=metrics.get("num_eval_items", "n/a"),
        metric_rows=rows,
        picture=picture if has(picture) else None,
        picture_caption=caption,
        histogram="codebook_usage.png" if has("codebook_usage.png") else None,
        codes_used=round(float(code_usage) * config.codebook_size * config.codes_per_position)
        if code_usage is not None
        else None,
        num_codes=config.codebook_size * config.codes_per_position,
        perplexity=f"{float(perplexity):.1f}" if perplexity is not None else None,
    )


def _finite(value) -> bool:
    """A figure the card can show (PESQ is NaN when it scored no clip)."""
    return isinstance(value, (int, float)) and not math.isnan(value)


def _quantizer_description(config) -> str:
    """The quantizer in one line, e.g. `residual VQ, 8 levels of K = 1024 (80 bits per position)`."""
    bits = f"{config.bits_per_position:g} bits per position"
    kind = getattr(config, "quantizer_type", "vq")
    if kind == "rvq":
        return f"residual VQ, {config.num_quantizers} levels of K = {config.codebook_size} ({bits}), update: {config.codebook_update}"
    if kind == "fsq":
        return f"FSQ, levels {config.fsq_levels} (K = {config.codebook_size}, {bits}), no codebook"
    if kind == "gumbel":
        return f"Gumbel-softmax, K = {config.codebook_size} ({bits}), argmax codes"
    lookup = f", lookup in {config.lookup_dim} dims" if config.lookup_dim != config.codebook_dim else ""
    return f"VQ, K = {config.codebook_size}, D = {config.codebook_dim}{lookup} ({bits}), update: {config.codebook_update}"


def write_model_card(
    output_dir: str | os.PathLike, config, metrics: dict, training_args: dict, repo_id: str | None = None
) -> Path:
    """Render the card into `output_dir/README.md` (written beside, then renamed) and return its path."""
    training_args = {**training_args, "output_dir": str(output_dir)}
    card = build_model_card(config, metrics, training_args, repo_id)
    path = Path(output_dir) / "README.md"
    partial = path.with_name(f".README.md.tmp-{os.getpid()}")
    partial.write_text(str(card), encoding="utf-8")
    os.replace(partial, path)
    return path
