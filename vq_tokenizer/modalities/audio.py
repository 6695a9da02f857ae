"""Audio: `input_values` `[B, C, T]` with a `padding_mask`, codes `[t]`, WAV/FLAC/OGG/... files, speech figures
(SI-SNR, STOI, PESQ, log-mel L1) per bitrate and clip group, spectrograms and decoded examples."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..feature_extraction_vqvae import VQVAEFeatureExtractor
from ..media_io import decode_audio_example, resample
from ..metrics import speech_metrics_per_item
from .base import Modality, Note

__all__ = [
    "AUDIO_COLUMN_CANDIDATES",
    "AUDIO_SUFFIXES",
    "AudioModality",
    "audio_batch",
    "prepare_audio_column",
    "bitrate_kbps",
    "read_examples",
    "save_spectrograms",
]

AUDIO_COLUMN_CANDIDATES = ("audio", "waveform", "speech", "input_values", "array")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
EXAMPLES_FOLDER = "examples"
EXAMPLES_INDEX = "examples.json"
LEVEL_PICTURE = "spectrogram_levels.png"


def bitrate_kbps(config, levels: int | None = None) -> float:
    """kbit/s of the codes of the first `levels` levels (default: all): `frame_rate * levels * log2(K) / 1000`."""
    levels = config.codes_per_position if levels is None else levels
    return config.frame_rate * levels * math.log2(config.codebook_size) / 1000


def read_examples(folder: str | Path) -> dict | None:
    """The index of the decoded examples an evaluation wrote into `folder` (`examples/examples.json`), or None:
    `{"clips": [{"group", "seconds", "original", "decoded": [{"levels", "kbps", "path"}]}], "picture"}`, paths
    relative to `folder`."""
    path = Path(folder) / EXAMPLES_FOLDER / EXAMPLES_INDEX
    return json.loads(path.read_text()) if path.is_file() else None


def audio_batch(feature_extractor, values: Sequence, sampling_rates: Sequence[int | None] | None = None):
    """`input_values` + `padding_mask` tensors for audio items whose sampling rates may differ.

    Each item (a dataset cell or an array, see `media_io.decode_audio_example`) is decoded and resampled to
    the extractor's rate on its own (a rate of None means the extractor's), then the extractor pads them
    into one batch.
    """
    target = feature_extractor.sampling_rate
    rates = [None] * len(values) if sampling_rates is None else sampling_rates
    arrays = []
    for value, rate in zip(values, rates, strict=True):
        array, rate = decode_audio_example(value, rate)
        arrays.append(resample(array, rate or target, target))
    return feature_extractor(arrays, sampling_rate=target, return_tensors="pt")


def prepare_audio_column(dataset, column: str):
    """Make `column` cheap to read as arrays: encoded `Audio` cells stay undecoded (`{"bytes", "path"}`,
    decoded by `media_io.decode_audio_example` with soundfile, since `datasets`' decoding needs torchcodec),
    and float lists come out as numpy arrays instead of Python lists."""
    import datasets

    feature = (dataset.features or {}).get(column)
    if isinstance(feature, datasets.Audio):
        return dataset.cast_column(column, datasets.Audio(decode=False))
    if feature is not None and isinstance(dataset, datasets.Dataset):
        return dataset.with_format("numpy", columns=[column], output_all_columns=True)
    return dataset


class AudioModality(Modality):
    name = "audio"
    input_name = "input_values"
    model_input_names = ("input_values", "padding_mask")
    column_candidates = AUDIO_COLUMN_CANDIDATES
    folder_builder = "audiofolder"
    file_suffixes = AUDIO_SUFFIXES
    default_suffix = ".wav"
    code_layout = "[t]"
    picture_stem = "spectrogram"
    picture_caption = "spectrogram of a held-out clip: original (top) and reconstruction"
    hub_task = "audio-to-audio"
    eval_groups = ("all", "synthetic", "recorded", "noise")  # the groups of `speech_corpus.clip_group`
    table_key = "speech_table"
    optional_figures = ("pesq",)  # NaN where PESQ finds nothing to score (silence, too short)

    @property
    def processor_class(self) -> type:
        return VQVAEFeatureExtractor

    def processor_for(self, config, **kwargs) -> VQVAEFeatureExtractor:
        defaults = {
            "feature_size": config.in_channels,
            "sampling_rate": config.sampling_rate,
            "hop_length": config.hop_length,
        }
        return VQVAEFeatureExtractor(**{**defaults, **kwargs})

    # -- datasets -----------------------------------------------------------------------------------------
    def prepare_dataset(self, dataset, column: str):
        return prepare_audio_column(dataset, column)

    def batch(self, processor, values: Sequence, sampling_rates=None) -> dict[str, torch.Tensor]:
        inputs = audio_batch(processor, values, sampling_rates)
        return {"input_values": inputs["input_values"], "padding_mask": inputs["padding_mask"]}

    def group_of(self, example: dict) -> str:
        """`speech_corpus.clip_group` of the row's `speaker` and `source` columns ("all" without them)."""
        from ..speech_corpus import clip_group

        speaker, source = example.get("speaker"), example.get("source")
        return clip_group(None if speaker is None else str(speaker), None if source is None else str(source))

    def code_mask(self, inputs: dict[str, torch.Tensor], config) -> torch.Tensor:
        # A code counts when its first sample is real audio; padding-only frames are left out.
        return inputs["padding_mask"][:, :: config.hop_length].bool()

    # -- files --------------------------------------------------------------------------------------------
    def read_file(self, path, config, note: Note | None = None) -> np.ndarray:
        """`[C, T]` float32 at the model's rate and channels (resampled samples clipped to [-1, 1])."""
        from ..media_io import convert_channels, load_audio

        path = Path(path)
        self._check_exists(path)
        array, rate = load_audio(path)
        if rate != config.sampling_rate:
            self._note(note, f"{path}: resampled {rate} Hz to the model's {config.sampling_rate} Hz")
        if array.shape[0] != config.in_channels:
            if array.shape[0] > 2 and config.in_channels == 2:
                raise ValueError(
                    f"{path}: has {array.shape[0]} channels and the model takes stereo; downmix it first "
                    "(e.g. `sox in.wav -c 2 out.wav`)"
                )
            self._note(
                note, f"{path}: converted {array.shape[0]} channel(s) to the model's {config.in_channels}"
            )
            array = convert_channels(array, config.in_channels)
        if rate != config.sampling_rate:
            array = np.clip(resample(array, rate, config.sampling_rate), -1.0, 1.0)
        return array

    def file_inputs(self, processor, item, config) -> tuple[dict[str, torch.Tensor], dict]:
        inputs = processor(item, sampling_rate=config.sampling_rate, return_tensors="pt")
        info = {"num_samples": int(item.shape[-1]), "sampling_rate": int(config.sampling_rate)}
        return {"input_values": inputs["input_values"]}, info

    def describe_encoding(self, info: dict, codes, config) -> str:
        seconds = info["num_samples"] / info["sampling_rate"]
        shape = "x".join(str(s) for s in codes.shape)
        return f"{seconds:.2f} s -> {codes.size} codes [{shape}] ({config.frame_rate:g} tokens/s)"

    def postprocess(self, processor, reconstruction: torch.Tensor, info: dict) -> np.ndarray:
        waveform = processor.postprocess(reconstruction)[0]
        return waveform[:, : info["num_samples"]] if "num_samples" in info else waveform

    def write_file(self, path, item, config) -> str:
        from ..media_io import save_audio

        rate = config.sampling_rate
        save_audio(path, item, rate)
        return f"{item.shape[-1] / rate:.2f} s at {rate} Hz"

    # -- evaluation ---------------------------------------------------------------------------------------
    def _figures(self, inputs, reconstruction, processor, keep_example: bool):
        input_values, mask = inputs["input_values"], inputs["padding_mask"]
        values = speech_metrics_per_item(
            reconstruction.float(), input_values.float(), mask, int(processor.sampling_rate)
        )
        example = None
        if keep_example:  # the first clip, without its padding
            real = int(mask[0].sum())
            example = (input_values[0, :, :real].cpu(), reconstruction[0, :, :real].float().cpu())
        return values, example

    def _items(self, inputs, reconstructions: dict[int, torch.Tensor]) -> list:
        input_values, mask = inputs["input_values"], inputs["padding_mask"]
        items = []
        for index, real in enumerate(mask.sum(-1).tolist()):
            real = int(real)
            decoded = {count: r[index, :, :real].float().cpu() for count, r in reconstructions.items()}
            items.append((input_values[index, :, :real].float().cpu(), decoded))
        return items

    def save_examples(self, items: Sequence, groups: Sequence[str], config, folder) -> Path | None:
        """WAVs of each clip (`examples/<n>-<group>-original.wav`, `...-<levels>q-<kbps>kbps.wav`, 16-bit PCM)
        and, with several bitrates, the first clip's spectrograms at each (`spectrogram_levels.png`), indexed
        in `examples/examples.json` (see `read_examples`)."""
        from ..media_io import save_audio

        if not items:
            return None
        folder = Path(folder)
        examples = folder / EXAMPLES_FOLDER
        examples.mkdir(parents=True, exist_ok=True)
        rate = config.sampling_rate
        clips = []
        for number, ((original, decoded), group) in enumerate(zip(items, groups, strict=True), start=1):
            stem = f"{number}-{group}"
            save_audio(examples / f"{stem}-original.wav", original.clamp(-1, 1).numpy(), rate)
            entry = {
                "group": group,
                "seconds": round(original.shape[-1] / rate, 3),
                "original": f"{EXAMPLES_FOLDER}/{stem}-original.wav",
                "decoded": [],
            }
            for count in sorted(decoded):
                kbps = round(bitrate_kbps(config, count), 3)
                name = f"{stem}-{count}q-{kbps:g}kbps.wav"
                save_audio(examples / name, decoded[count].clamp(-1, 1).numpy(), rate)
                entry["decoded"].append({"levels": count, "kbps": kbps, "path": f"{EXAMPLES_FOLDER}/{name}"})
            clips.append(entry)
        picture = None
        original, decoded = items[0]
        if len(decoded) > 1:
            titles = {}
            for count in sorted(decoded):
                title = f"{count} level{'s' if count > 1 else ''}, {bitrate_kbps(config, count):g} kbit/s"
                titles[title] = decoded[count]
            save_spectrograms(original, titles, rate, folder / LEVEL_PICTURE)
            picture = LEVEL_PICTURE
        index = examples / EXAMPLES_INDEX
        index.write_text(json.dumps({"clips": clips, "picture": picture}, indent=2) + "\n")
        return index

    def rate_figures(self, config, levels: int) -> dict:
        return {"kbps": round(bitrate_kbps(config, levels), 3)}

    def token_figures(self, config, example) -> dict:
        return {
            "tokens_per_second": config.frame_rate * config.codes_per_position,
            "bits_per_second": round(config.frame_rate * config.bits_per_position, 2),
        }

    def save_picture(self, example, config, path) -> Path:
        return save_spectrograms(*example, config.sampling_rate, path)

    # -- model cards --------------------------------------------------------------------------------------
    def card_details(self, config, metrics: dict, load_id: str, output_dir=None) -> dict:
        usage = f"""import numpy as np
from transformers import pipeline
from vq_tokenizer import VQVAEModel, VQVAEFeatureExtractor

model = VQVAEModel.from_pretrained("{load_id}").eval()
extractor = VQVAEFeatureExtractor.from_pretrained("{load_id}")
waveform = np.zeros({config.sampling_rate}, dtype=np.float32)  # one second of your audio here
inputs = extractor(waveform, sampling_rate={config.sampling_rate}, return_tensors="pt")
codes = model.encode(inputs.input_values).codes            # LongTensor [1, t]
audio = model.decode(codes).reconstruction                 # [1, {config.in_channels}, T]

# The same through transformers' pipeline() (importing vq_tokenizer registers both tasks):
tokens = pipeline("vq-tokenization", model="{load_id}")(waveform, sampling_rate={config.sampling_rate})
sound = pipeline("vq-detokenization", model="{load_id}")(tokens)  # {{"audio": [C, T], "sampling_rate": ...}}"""
        return {
            "tokens_description": f"{config.frame_rate * config.codes_per_position:g} per second of audio"
            + (f" ({config.codes_per_position} levels per frame)" if config.codes_per_position > 1 else ""),
            "bits_description": f"{config.frame_rate * config.bits_per_position:g} per second of audio",
            "input_description": f"{config.sampling_rate} Hz audio",
            "token_description": f"a sequence of discrete codes ({config.frame_rate:g} per second)",
            "usage_snippet": usage,
            **_card_speech_sections(metrics, output_dir),
        }


def _card_speech_sections(metrics: dict, output_dir) -> dict:
    """The card's per-bitrate table (`speech_rows`), the per-bitrate spectrograms (`level_picture`) and the
    decoded examples (`audio_examples`, bitrates in `example_rates`) of an evaluation written into
    `output_dir`."""

    def figure(value, digits: int) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"

    rows = [
        {
            "levels": row["levels"],
            "kbps": f"{row['kbps']:g}",
            "group": row["group"],
            "clips": row["items"],
            "si_snr": figure(row.get("si_snr"), 2),
            "stoi": figure(row.get("stoi"), 3),
            "pesq": figure(row.get("pesq"), 2),
            "pesq_items": row.get("pesq_items", row["items"]),
            "mel_l1": figure(row.get("mel_l1"), 3),
        }
        for row in metrics.get("speech_table") or []
    ]
    index = read_examples(output_dir) if output_dir else None
    clips, rates, picture = [], [], None
    if index:
        folder = Path(output_dir)
        clips = [
            clip
            for clip in index.get("clips", [])
            if (folder / clip["original"]).is_file()
            and all((folder / decoded["path"]).is_file() for decoded in clip["decoded"])
        ]
        rates = [f"{decoded['kbps']:g}" for decoded in clips[0]["decoded"]] if clips else []
        if index.get("picture") and (folder / index["picture"]).is_file():
            picture = index["picture"]
    return {"speech_rows": rows, "level_picture": picture, "audio_examples": clips, "example_rates": rates}


def save_spectrograms(
    original: torch.Tensor,
    reconstruction: torch.Tensor | dict[str, torch.Tensor],
    sampling_rate: int,
    path: str | Path,
) -> Path:
    """Log-magnitude spectrograms of the first channel, original above reconstruction, on one colour scale
    (the original's peak down to 100 dB below it; digital silence shows as the darkest colour).

    `reconstruction` may be `{title: waveform}`: one row each, below the original (e.g. one per bitrate).
    """
    from matplotlib import mlab
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry is touched

    rows = reconstruction if isinstance(reconstruction, dict) else {"reconstruction": reconstruction}
    signals, titles = [original, *rows.values()], ["original", *rows]
    spectra = [
        mlab.specgram(signal[0].numpy(), NFFT=512, Fs=sampling_rate, noverlap=384) for signal in signals
    ]
    peak = max(float(spectra[0][0].max()), 1e-20)
    vmax = 10 * np.log10(peak)
    figure = Figure(figsize=(8, 2.5 * len(signals)), dpi=100)
    axes = figure.subplots(len(signals), 1, sharex=True)
    for axis, (power, freqs, _), title in zip(axes, spectra, titles, strict=True):
        decibels = 10 * np.log10(np.maximum(power, peak * 1e-10))  # digital silence: the darkest colour
        duration = original.shape[-1] / sampling_rate
        axis.imshow(
            decibels,
            origin="lower",
            aspect="auto",
            extent=(0, duration, freqs[0], freqs[-1]),
            cmap="magma",
            vmin=vmax - 100,
            vmax=vmax,
        )
        axis.set_title(title)
        axis.set_ylabel("Hz")
    axes[-1].set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)
