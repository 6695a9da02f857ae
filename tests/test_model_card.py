"""Model cards: real tiny tokenizers, evaluated for real, carded, parsed by huggingface_hub, snippets run."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData

from vq_tokenizer import VQVAEConfig, VQVAEFeatureExtractor, VQVAEImageProcessor, VQVAEModel
from vq_tokenizer.checkpointing import save_pretrained_atomic
from vq_tokenizer.evaluation import evaluate
from vq_tokenizer.model_card import REDACTED, build_model_card, redact_command, write_model_card

SECRET = "hf_card_secret_never_shown"
TINY = dict(hidden_size=16, residual_hidden_size=8, num_residual_layers=1, codebook_size=32, codebook_dim=8)


def _training_args(dataset_name: str) -> dict:
    """What train_vqvae.py hands the card (`vars(args)` plus the parameter count), token included."""
    return {
        "dataset_name": dataset_name,
        "train_split": "train",
        "eval_split": "test",
        "per_device_batch_size": 16,
        "learning_rate": 1e-3,
        "max_steps": 4,
        "seed": 0,
        "mixed_precision": "no",
        "hub_token": SECRET,
        "command": f"training/train_vqvae.py --config tiny.yaml --hub_token {SECRET} --push_to_hub",
    }


def _evaluated(model, batches, processor, folder) -> dict:
    """The project's own evaluation on one CPU process: figures plus the pictures the card shows."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        metrics = evaluate(Accelerator(cpu=True), model, batches, processor, folder, step=4, final=True)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return {**metrics, "step": 4, "train_seconds": 1.5, "num_processes": 1}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A tiny image tokenizer saved like the training script saves one, with its card."""
    from vq_tokenizer.data import load_image_dataset

    folder = tmp_path_factory.mktemp("image-run")
    torch.manual_seed(0)
    config = VQVAEConfig(modality="image", in_channels=1, downsampling_factor=4, **TINY)
    model = VQVAEModel(config).eval()
    processor = VQVAEImageProcessor(num_channels=1, size_divisor=config.downsampling_factor)
    images = load_image_dataset("fashion_mnist", "test")[:32]["image"]
    batches = [
        {"pixel_values": processor(images[i : i + 16], return_tensors="pt").pixel_values} for i in (0, 16)
    ]
    with torch.no_grad():
        model.train()(**batches[0])  # the first training forward initialises the codebook by k-means
    metrics = _evaluated(model.eval(), batches, processor, folder)
    save_pretrained_atomic(folder, model, processor)
    args = {**_training_args("fashion_mnist"), "num_parameters": model.num_parameters()}
    path = write_model_card(folder, config, metrics, args)
    return folder, path, metrics, config


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory):
    """A tiny audio tokenizer on chirps and noise bursts at 8 kHz, saved with its card."""
    folder = tmp_path_factory.mktemp("audio-run")
    torch.manual_seed(0)
    config = VQVAEConfig(modality="audio", in_channels=1, downsampling_factor=16, sampling_rate=8000, **TINY)
    model = VQVAEModel(config).eval()
    extractor = VQVAEFeatureExtractor(feature_size=1, sampling_rate=8000, hop_length=config.hop_length)
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 8000
    clips = [
        (0.5 * np.sin(2 * np.pi * (200 + 400 * k) * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)).astype(
            np.float32
        )[: 3000 + 250 * k]
        for k in range(4)
    ]
    batch = extractor(clips, sampling_rate=8000, return_tensors="pt")
    batches = [{"input_values": batch.input_values, "padding_mask": batch.padding_mask}]
    with torch.no_grad():
        model.train()(**batches[0])  # the first training forward initialises the codebook by k-means
    metrics = _evaluated(model.eval(), batches, extractor, folder)
    save_pretrained_atomic(folder, model, extractor)
    corpus = tmp_path_factory.mktemp("speech-corpus")  # a local dataset folder (save_to_disk)
    args = {**_training_args(str(corpus)), "num_parameters": model.num_parameters()}
    path = write_model_card(folder, config, metrics, args)
    return folder, path, metrics, config


def _python_block(text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1, f"expected one python block, found {len(blocks)}"
    return blocks[0]


def _check_metadata(card: ModelCard, metrics: dict, expected_types: set[str], task_type: str) -> None:
    data = card.data
    assert data.library_name == "vq_tokenizer"
    assert data.license == "apache-2.0"
    # No Hub task fits a tokenizer (the nearest one's built-in pipeline returns the loss): no pipeline_tag.
    assert data.pipeline_tag is None and "pipeline_tag" not in data.to_dict()
    assert {"vq-vae", "tokenizer", "vector-quantization", "vq-tokenization"} <= set(data.tags)
    # model-index holds the measured figures, rounded as the card says.
    assert "model-index" in data.to_dict()
    by_type = {result.metric_type: result for result in data.eval_results}
    assert set(by_type) == expected_types
    for result in data.eval_results:
        assert result.task_type == task_type and result.dataset_split == "test"
    assert by_type["codebook_usage"].metric_value == pytest.approx(metrics["codebook_usage"], abs=1e-4)
    assert by_type["perplexity"].metric_value == pytest.approx(metrics["perplexity"], abs=0.05)
    # ModelCardData round trip: what is written is what is read back.
    assert ModelCardData(**data.to_dict()).to_dict() == data.to_dict()


def test_image_card_metadata_and_content(image_run):
    folder, path, metrics, config = image_run
    card = ModelCard.load(path)
    _check_metadata(
        card, metrics, {"psnr", "ssim", "mse", "codebook_usage", "perplexity"}, "image-feature-extraction"
    )
    assert card.data.datasets == ["zalando-datasets/fashion_mnist"]
    psnr = next(r for r in card.data.eval_results if r.metric_type == "psnr")
    assert psnr.metric_value == pytest.approx(metrics["psnr"], abs=0.01)

    text = card.text
    assert "**K = 32**" in text and "**D = 8**" in text
    assert "| downsampling | 4 |" in text
    assert f"| tokens | {metrics['tokens_per_image']} per image" in text and metrics["tokens_per_image"] == 49
    assert f"| parameters | {VQVAEModel(config).num_parameters():,} |" in text
    assert "fashion_mnist" in text and "4 steps, batch 16" in text and "learning rate 0.001" in text
    assert f"| PSNR (dB, data range 1) | {metrics['psnr']:.2f} |" in text
    used = round(metrics["codebook_usage"] * 32)
    assert f"{used} of the 32 codes are used" in text
    # The pictures the card shows are files of the run.
    for picture in ("reconstructions.png", "codebook_usage.png"):
        assert f"]({picture})" in text and (folder / picture).is_file()
    assert "## Limitations" in text
    assert SECRET not in str(card) and f"--hub_token {REDACTED}" in text


def test_audio_card_metadata_and_content(audio_run):
    folder, path, metrics, config = audio_run
    card = ModelCard.load(path)
    expected = {"si-snr", "stoi", "mel-l1", "codebook_usage", "perplexity"}
    expected |= {"pesq"} if metrics["pesq_items"] else set()  # PESQ is NaN when it scored no clip
    _check_metadata(card, metrics, expected, "audio-to-audio")
    assert card.data.datasets is None  # a local folder is not a Hub dataset id
    text = card.text
    assert "8000 Hz audio" in text and "**K = 32**" in text and "**D = 8**" in text
    assert "| hop length | 16 samples at 8000 Hz |" in text
    assert "| tokens | 500 per second of audio |" in text
    assert f"| SI-SNR (dB) | {metrics['si_snr']:.2f} |" in text
    assert "](spectrogram.png)" in text and (folder / "spectrogram.png").is_file()
    assert "## Limitations" in text and SECRET not in str(card)


@pytest.mark.parametrize("run", ["image_run", "audio_run"])
def test_card_snippet_runs_against_the_saved_folder(run, request, monkeypatch):
    """The card's python block, exactly as written, loads the folder it names and round-trips an input."""
    folder, path, _, config = request.getfixturevalue(run)
    snippet = _python_block(path.read_text())
    assert f'from_pretrained("{folder}")' in snippet
    monkeypatch.chdir(folder.parent)
    namespace: dict = {}
    exec(compile(snippet, str(path), "exec"), namespace)  # noqa: S102 - the card's own code is the test
    codes = namespace["codes"]
    assert codes.dtype == torch.long and int(codes.max()) < config.codebook_size
    assert namespace["tokens"]["codes"] == codes[0].tolist()  # the pipeline gives the same codes
    if config.modality == "image":
        assert tuple(codes.shape) == (1, 7, 7)
        assert namespace["images"][0].size == (28, 28) and namespace["picture"].size == (28, 28)
    else:
        assert tuple(codes.shape) == (1, config.sampling_rate // config.hop_length)
        assert tuple(namespace["audio"].shape) == (1, 1, config.sampling_rate)
        assert namespace["sound"]["audio"].shape == (1, config.sampling_rate)


def test_card_validates_on_the_hub_and_snippet_runs_by_repo_id(
    image_run, hub_api, hub_repo_id, hub_cache, hub_token
):
    """Pushed with the model: the Hub's YAML check passes and the snippet, naming the repo id, runs."""
    folder, _, metrics, config = image_run
    model = VQVAEModel.from_pretrained(folder)
    processor = VQVAEImageProcessor.from_pretrained(folder)
    model.push_to_hub(hub_repo_id, token=hub_token)
    processor.push_to_hub(hub_repo_id, token=hub_token)
    card = build_model_card(config, metrics, _training_args("fashion_mnist"), repo_id=hub_repo_id)
    card.validate()  # POST /api/validate-yaml on the configured endpoint
    card.push_to_hub(hub_repo_id, token=hub_token)

    remote = ModelCard.load(hub_repo_id)
    assert remote.data.to_dict() == card.data.to_dict()
    assert remote.data.eval_results[0].metric_type == "psnr"
    snippet = _python_block(remote.text)
    assert f'from_pretrained("{hub_repo_id}")' in snippet
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102
    assert tuple(namespace["codes"].shape) == (1, 7, 7)


def test_card_without_metrics_or_pictures_still_parses(tmp_path):
    """A card for a run with no evaluation: no model-index, no picture links, valid YAML."""
    config = VQVAEConfig(modality="image", in_channels=3, downsampling_factor=8, **TINY)
    path = write_model_card(tmp_path, config, {}, {"dataset_name": "my/photos"})
    card = ModelCard.load(path)
    assert card.data.eval_results is None and "model-index" not in card.data.to_dict()
    assert card.data.datasets == ["my/photos"]
    assert "](reconstructions.png)" not in card.text and "## Codebook usage" not in card.text
    assert "Not evaluated yet." in card.text and "None" not in card.text
    assert "| modality | image (3 channels) |" in card.text and "| downsampling | 8 |" in card.text


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train.py", "--hub_token", SECRET, "--lr", "1"], f"train.py --hub_token {REDACTED} --lr 1"),
        (["train.py", f"--hub_token={SECRET}"], f"train.py --hub_token={REDACTED}"),
        (["train.py", "--note", f"x{SECRET}y"], f"train.py --note x{REDACTED}y"),
        (["train.py", "--output_dir", "my dir"], "train.py --output_dir 'my dir'"),
    ],
)
def test_redact_command(argv, expected):
    assert redact_command(argv, [SECRET]) == expected


@pytest.fixture(scope="module")
def speech_rvq_run(tmp_path_factory):
    """A tiny 4-level residual audio tokenizer evaluated on the offline speech corpus' test split, with its card."""
    import functools
    import shutil

    from torch.utils.data import DataLoader

    from vq_tokenizer.modalities import modality_for
    from vq_tokenizer.speech_corpus import build_speech_corpus

    if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
        pytest.skip("needs espeak-ng and flite")
    folder = tmp_path_factory.mktemp("speech-rvq-run")
    torch.manual_seed(0)
    config = VQVAEConfig(
        modality="audio", in_channels=1, hop_length=16, quantizer_type="rvq", num_quantizers=4, **TINY
    )
    model = VQVAEModel(config).eval()
    modality = modality_for(config)
    extractor = modality.processor_for(config)
    test = build_speech_corpus(None, num_train=1, num_test=2, seed=0, num_workers=1)["test"]
    test = modality.prepare_dataset(test, "audio")
    collate = functools.partial(modality.collate_examples, extractor, column="audio", with_groups=True)
    batches = list(DataLoader(test, batch_size=4, collate_fn=collate))
    with torch.no_grad():
        first = batches[0]
        model.train()(input_values=first["input_values"], padding_mask=first["padding_mask"])
    metrics = _evaluated(model.eval(), batches, extractor, folder)
    save_pretrained_atomic(folder, model, extractor)
    args = {**_training_args("speech_corpus"), "num_parameters": model.num_parameters()}
    path = write_model_card(folder, config, metrics, args)
    return folder, path, metrics, config


def test_speech_card_has_the_table_per_bitrate_spectrograms_and_examples(speech_rvq_run):
    folder, path, metrics, config = speech_rvq_run
    card = ModelCard.load(path)
    _check_metadata(
        card, metrics, {"si-snr", "stoi", "pesq", "mel-l1", "codebook_usage", "perplexity"}, "audio-to-audio"
    )
    text = card.text
    assert "### Per bitrate and clip group" in text
    table = metrics["speech_table"]
    assert {row["levels"] for row in table} == {1, 2, 4}
    assert {row["group"] for row in table} == {"all", "synthetic", "recorded", "noise"}
    for row in table:  # one card row per bitrate x group, with the figures as evaluated
        line = (
            f"| {row['levels']} | {row['kbps']:g} | {row['group']} | {row['items']} | {row['si_snr']:.2f} | "
            f"{row['stoi']:.3f} | {row['pesq']:.2f} | {row['pesq_items']} | {row['mel_l1']:.3f} |"
        )
        assert line in text, line
    assert f"| STOI | {metrics['stoi']:.3f} |" in text and f"| log-mel L1 | {metrics['mel_l1']:.3f} |" in text
    assert "](spectrogram_levels.png)" in text and (folder / "spectrogram_levels.png").is_file()
    # The decoded examples: one row per clip, one link per bitrate, every linked file in the folder.
    assert "| clip | group | seconds | original | 5 kbit/s | 10 kbit/s | 20 kbit/s |" in text
    links = re.findall(r"\[wav\]\((examples/[^)]+\.wav)\)", text)
    assert len(links) == 3 * 4 and all((folder / link).is_file() for link in links)
    assert [line.split(" | ")[1] for line in text.splitlines() if "-original.wav" in line] == [
        "synthetic",
        "recorded",
        "noise",
    ]


def test_card_leaves_out_a_pesq_that_scored_no_clip(speech_rvq_run):
    _, _, metrics, config = speech_rvq_run
    table = [{**row, "pesq": float("nan"), "pesq_items": 0} for row in metrics["speech_table"]]
    unscored = {**metrics, "pesq": float("nan"), "pesq_items": 0, "speech_table": table}
    card = build_model_card(config, unscored, _training_args("speech_corpus"))
    assert "pesq" not in {result.metric_type for result in card.data.eval_results}
    assert "PESQ (wideband)" not in card.text and "| n/a | 0 |" in card.text
