"""An offline English speech corpus synthesised with espeak-ng and flite, plus ALSA's real test recordings.

Nothing is downloaded and no audio is committed: sentences come from word lists and templates drawn with a
seeded RNG, each is spoken by a voice, speed and pitch drawn from the same RNG, and the waveform is
resampled to 16 kHz mono float32 with `vq_tokenizer.media_io`. The same arguments give the same corpus.

Splits (a `datasets.DatasetDict`):

- `train`: `num_train` sentences spoken by the train voices (espeak-ng accents x variants, flite awb, rms,
  slt and kal16).
- `test`: `num_test` other sentences (no text in common with train) spoken by held-out voices (other
  espeak-ng accents and variants, flite's 8 kHz `kal` diphone voice), plus the real recordings in
  `/usr/share/sounds/alsa/*.wav` (a person saying "Front center" etc., and `Noise.wav`, pink noise).

Columns: `audio` (list of float32 in [-1, 1], mono, `sampling_rate` Hz), `sampling_rate` (int),
`text` (str; empty for the noise recording), `speaker` (the voice, e.g. `"espeak-ng:en-us+f3"`,
`"flite:slt"`, `"alsa"`) and `source` (how the clip was made, e.g.
`"espeak-ng:en-us+f3@speed=150,pitch=60"`, `"flite:slt@duration_stretch=1.10"`,
`"alsa:Front_Center.wav"`). Read the audio as arrays with `dataset.with_format("numpy")`.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, List, Value

from .media_io import load_audio

logger = logging.getLogger(__name__)

__all__ = [
    "CLIP_GROUPS",
    "SAMPLING_RATE",
    "build_speech_corpus",
    "clip_group",
    "corpus_features",
    "make_sentences",
    "summarize",
]

SAMPLING_RATE = 16000
ALSA_DIR = "/usr/share/sounds/alsa"

# Voices are split so that the test split hears accents and variants the model never trained on.
TRAIN_ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029")
TRAIN_ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f5", "klatt", "klatt2")
TEST_ESPEAK_ACCENTS = ("en-us-nyc", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
TEST_ESPEAK_VARIANTS = ("m6", "m8", "f4", "klatt3", "Andy", "steph", "grandma")
# flite has four speakers; `kal` (8 kHz diphone build) is held out, `kal16` (16 kHz build) trains.
# `awb_time` only speaks clock times and is not used.
TRAIN_FLITE_VOICES = ("awb", "rms", "slt", "kal16")
TEST_FLITE_VOICES = ("kal",)
FLITE_SHARE = 0.35  # fraction of synthetic clips spoken by flite
SPEED_RANGE = (130, 200)  # espeak-ng words per minute (its default is 175)
PITCH_RANGE = (25, 75)  # espeak-ng pitch, 0-99 (default 50)
STRETCH_RANGE = (0.85, 1.2)  # flite duration_stretch (1.0 = its own speed)

# The groups speech figures are reported in (averaging the noise clip into speech hides both).
CLIP_GROUPS = ("synthetic", "recorded", "noise", "all")
NOISE_SOURCE = "alsa:Noise.wav"
_SYNTHETIC_ENGINES = ("espeak-ng:", "flite:")


def clip_group(speaker: str | None, source: str | None) -> str:
    """The group a clip is reported in, from its `speaker` and `source` columns.

    `"synthetic"` for espeak-ng and flite voices, `"noise"` for ALSA's pink-noise clip (source
    `"alsa:Noise.wav"`), `"recorded"` for the other ALSA recordings (speaker `"alsa"`), and `"all"` when
    neither column says (a clip from another dataset, or no columns at all).
    """
    if source == NOISE_SOURCE:
        return "noise"
    if speaker == "alsa" or (speaker is None and source is not None and source.startswith("alsa:")):
        return "recorded"
    for name in (speaker, source):
        if name is not None and name.startswith(_SYNTHETIC_ENGINES):
            return "synthetic"
    return "all"


# fmt: off
_NAMES = (
    "Alice", "Bruno", "Chen", "Dara", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Keira", "Liam",
    "Maya", "Nikolai", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Uma", "Victor", "Wen", "Yusuf",
)
_ADJECTIVES = (
    "old", "quiet", "bright", "heavy", "small", "broken", "golden", "narrow", "distant", "careful", "frozen",
    "noisy", "gentle", "ancient", "empty", "crowded", "yellow", "wooden", "strange", "simple", "rusty", "warm",
)
_NOUNS = (
    "garden", "river", "engine", "letter", "window", "market", "violin", "bridge", "lantern", "kitchen",
    "station", "mountain", "notebook", "harbour", "bicycle", "library", "forest", "teacher", "painter",
    "machine", "village", "ticket", "basket", "mirror", "island", "candle", "orchard", "tunnel",
)
_VERBS_PAST = (
    "found", "painted", "repaired", "carried", "visited", "opened", "described", "noticed", "cleaned",
    "measured", "followed", "borrowed", "photographed", "ignored", "remembered", "sold",
)
_VERBS_BASE = (
    "check", "close", "bring", "move", "read", "count", "fix", "paint", "find", "wash", "lock", "weigh",
)
_PLACES = (
    "near the station", "behind the old mill", "across the valley", "under the bridge", "at the market",
    "beside the harbour", "in the north wing", "on the third floor", "by the frozen lake", "outside the gate",
)
_TIMES = (
    "this morning", "last winter", "on Monday", "before dawn", "after lunch", "every Friday", "at midnight",
    "in early spring", "yesterday evening", "next week", "around noon", "twice a year",
)
_NUMBERS = (
    "two", "three", "four", "five", "seven", "nine", "eleven", "twelve", "fifteen", "twenty", "forty",
    "a hundred",
)
# fmt: on
_TEMPLATES = (
    "The {adj} {noun} {verb_past} the {adj2} {noun2} {place}.",
    "{name} {verb_past} {number} {noun2}s {time}.",
    "Did you see the {adj} {noun} {place}?",
    "Please {verb} the {noun} before {name} comes back {time}.",
    "{name} said that the {noun} was {adj} {time}.",
    "We {verb_past} a {adj} {noun} {place}, and {name} {verb_past2} it {time}.",
    "Is the {noun} still {adj}, or did {name} {verb} it {time}?",
    "There were {number} {adj} {noun}s {place} {time}.",
    "{name} and {name2} {verb_past} the {noun} {place}.",
    "Why would anyone {verb} a {adj} {noun} {time}?",
    "The {noun} {place} is {adj}, but the {noun2} is {adj2}.",
    "{name} asked me to {verb} {number} {noun}s {time}.",
)


def make_sentences(
    count: int, rng: random.Random, exclude: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """`count` distinct sentences from the templates, none of them in `exclude`."""
    sentences: list[str] = []
    seen = set(exclude)
    for _ in range(count * 1000):
        if len(sentences) == count:
            break
        name, name2 = rng.sample(_NAMES, 2)
        noun, noun2 = rng.sample(_NOUNS, 2)
        adj, adj2 = rng.sample(_ADJECTIVES, 2)
        verb_past, verb_past2 = rng.sample(_VERBS_PAST, 2)
        sentence = rng.choice(_TEMPLATES).format(
            name=name,
            name2=name2,
            noun=noun,
            noun2=noun2,
            adj=adj,
            adj2=adj2,
            verb_past=verb_past,
            verb_past2=verb_past2,
            verb=rng.choice(_VERBS_BASE),
            place=rng.choice(_PLACES),
            time=rng.choice(_TIMES),
            number=rng.choice(_NUMBERS),
        )
        if sentence not in seen:
            seen.add(sentence)
            sentences.append(sentence)
    if len(sentences) < count:
        raise ValueError(f"Could not make {count} distinct sentences from the templates.")
    return sentences


@dataclass(frozen=True)
class _Utterance:
    text: str
    engine: str  # "espeak-ng" or "flite"
    voice: str  # "en-us+f3" or "slt"
    speed: float  # words per minute (espeak-ng) or duration stretch (flite)
    pitch: int = 0  # espeak-ng only

    @property
    def speaker(self) -> str:
        return f"{self.engine}:{self.voice}"

    @property
    def source(self) -> str:
        if self.engine == "espeak-ng":
            return f"{self.speaker}@speed={int(self.speed)},pitch={self.pitch}"
        return f"{self.speaker}@duration_stretch={self.speed:.2f}"

    def command(self) -> list[str]:
        if self.engine == "espeak-ng":
            return [
                "espeak-ng",
                "-v",
                self.voice,
                "-s",
                str(int(self.speed)),
                "-p",
                str(self.pitch),
                "--stdout",
            ]
        return [
            "flite",
            "-voice",
            self.voice,
            "--setf",
            f"duration_stretch={self.speed:.2f}",
            "-o",
            "/dev/stdout",
        ]


def _draw_utterance(text: str, rng: random.Random, split: str) -> _Utterance:
    train = split == "train"
    if rng.random() < FLITE_SHARE:
        voice = rng.choice(TRAIN_FLITE_VOICES if train else TEST_FLITE_VOICES)
        return _Utterance(text, "flite", voice, round(rng.uniform(*STRETCH_RANGE), 2))
    accent = rng.choice(TRAIN_ESPEAK_ACCENTS if train else TEST_ESPEAK_ACCENTS)
    variant = rng.choice(TRAIN_ESPEAK_VARIANTS if train else TEST_ESPEAK_VARIANTS)
    voice = f"{accent}+{variant}" if variant else accent
    return _Utterance(text, "espeak-ng", voice, rng.randint(*SPEED_RANGE), rng.randint(*PITCH_RANGE))


def _synthesize(utterance: _Utterance) -> np.ndarray:
    """Speak one utterance; returns mono float32 `[T]` at 16 kHz."""
    command = utterance.command()
    if utterance.engine == "espeak-ng":
        stdin = utterance.text.encode()  # stdin, so no sentence is ever parsed as an option
    else:
        command += ["-t", utterance.text]
        stdin = None
    result = subprocess.run(command, input=stdin, capture_output=True, check=False, timeout=60, text=False)
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(
            f"`{' '.join(command)}` failed (exit {result.returncode}): {result.stderr.decode(errors='replace')}"
        )
    array, _ = load_audio(result.stdout, sampling_rate=SAMPLING_RATE, num_channels=1)
    return array[0]


def _check_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "flite") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"{' and '.join(missing)} not found on PATH; install them (Debian/Ubuntu: "
            f"`apt-get install {' '.join(missing)}`) to build the speech corpus."
        )


def corpus_features() -> Features:
    """The column types of every split."""
    return Features(
        {
            "audio": List(Value("float32")),
            "sampling_rate": Value("int32"),
            "text": Value("string"),
            "speaker": Value("string"),
            "source": Value("string"),
        }
    )


def _synthesize_split(
    texts: list[str], count: int, split: str, rng: random.Random, max_samples: int, pool: ThreadPoolExecutor
) -> dict[str, list]:
    """Speak sentences from `texts` in order until `count` clips fit in `max_samples`."""
    rows: dict[str, list] = {name: [] for name in corpus_features()}
    queue = list(texts)
    while len(rows["text"]) < count and queue:
        wanted = count - len(rows["text"])
        batch, queue = queue[:wanted], queue[wanted:]
        utterances = [_draw_utterance(text, rng, split) for text in batch]
        for utterance, audio in zip(utterances, pool.map(_synthesize, utterances), strict=True):
            if len(audio) > max_samples:
                logger.info(
                    "Skipping a %.1f s clip (%s): longer than max_seconds.",
                    len(audio) / SAMPLING_RATE,
                    utterance.source,
                )
                continue
            rows["audio"].append(audio)
            rows["sampling_rate"].append(SAMPLING_RATE)
            rows["text"].append(utterance.text)
            rows["speaker"].append(utterance.speaker)
            rows["source"].append(utterance.source)
    if len(rows["text"]) < count:
        raise ValueError(
            f"Only {len(rows['text'])} of {count} {split} clips fit in max_seconds; raise max_seconds."
        )
    return rows


def _alsa_rows(max_samples: int, alsa_dir: str) -> dict[str, list]:
    rows: dict[str, list] = {name: [] for name in corpus_features()}
    paths = sorted(glob.glob(os.path.join(alsa_dir, "*.wav")))
    if not paths:
        logger.warning("No recordings found in %s; the test split has synthetic speech only.", alsa_dir)
    for path in paths:
        audio, _ = load_audio(path, sampling_rate=SAMPLING_RATE, num_channels=1)
        name = os.path.basename(path)
        if audio.shape[1] > max_samples:
            logger.info("Skipping %s: longer than max_seconds.", name)
            continue
        stem = os.path.splitext(name)[0]
        rows["audio"].append(audio[0])
        rows["sampling_rate"].append(SAMPLING_RATE)
        # The recordings say their file names ("Front Center"); Noise.wav is noise with nothing said.
        rows["text"].append("" if stem == "Noise" else stem.replace("_", " ").capitalize())
        rows["speaker"].append("alsa")
        rows["source"].append(f"alsa:{name}")
    return rows


def _to_dataset(rows: dict[str, list]) -> Dataset:
    # Handing datasets one Arrow list array is ~30x faster than a list of numpy arrays.
    lengths = np.array([len(audio) for audio in rows["audio"]], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if offsets[-1] >= 2**31:
        raise ValueError("More than 2**31 samples in one split; build the corpus in several parts.")
    samples = np.concatenate(rows["audio"]) if rows["audio"] else np.zeros(0, dtype=np.float32)
    audio = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(samples.astype(np.float32)))
    return Dataset.from_dict({**rows, "audio": audio}, features=corpus_features())


def build_speech_corpus(
    output_dir: str | os.PathLike | None,
    num_train: int = 400,
    num_test: int = 40,
    seed: int = 0,
    max_seconds: float = 10.0,
    num_workers: int = 2,
    alsa_dir: str = ALSA_DIR,
) -> DatasetDict:
    """Synthesise the corpus and, if `output_dir` is given, `save_to_disk` it there.

    Args:
        output_dir: where to save the `DatasetDict` (`datasets.load_from_disk(output_dir)` reads it back);
            `None` only returns it.
        num_train: synthetic train clips.
        num_test: synthetic test clips; the ALSA recordings come on top of them.
        seed: seeds sentences, voices, speeds and pitches; the same arguments give the same corpus.
        max_seconds: longest clip kept; a longer synthetic clip is replaced by the next sentence.
        num_workers: synthesis processes run at once (the CPU cores to use).
        alsa_dir: folder of real `.wav` recordings added to the test split.

    Returns:
        `DatasetDict` with `train` and `test` splits (columns in the module docstring).
    """
    if num_train < 1 or num_test < 0:
        raise ValueError(f"Need num_train >= 1 and num_test >= 0, got {num_train} and {num_test}.")
    if max_seconds <= 0:
        raise ValueError(f"`max_seconds` must be positive, got {max_seconds}.")
    if num_workers < 1:
        raise ValueError(f"`num_workers` must be >= 1, got {num_workers}.")
    _check_tools()
    rng = random.Random(seed)
    max_samples = int(max_seconds * SAMPLING_RATE)
    # Spare sentences, so that clips dropped for length can be replaced.
    train_texts = make_sentences(3 * num_train + 50, rng)
    test_texts = make_sentences(3 * num_test + 50, rng, exclude=set(train_texts))
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        train_rows = _synthesize_split(train_texts, num_train, "train", rng, max_samples, pool)
        test_rows = _synthesize_split(test_texts, num_test, "test", rng, max_samples, pool)
    for name, values in _alsa_rows(max_samples, alsa_dir).items():
        test_rows[name].extend(values)
    corpus = DatasetDict(train=_to_dataset(train_rows), test=_to_dataset(test_rows))
    if output_dir is not None:
        corpus.save_to_disk(os.fspath(output_dir))
    return corpus


def summarize(corpus: DatasetDict) -> dict[str, dict]:
    """Per split: clips, hours, shortest/longest clip in seconds, clips per engine and per speaker."""
    summary = {}
    for split, dataset in corpus.items():
        lengths = pc.list_value_length(dataset.data.column("audio")).to_numpy()
        seconds = (lengths / np.asarray(dataset["sampling_rate"])).tolist()
        summary[split] = {
            "clips": len(dataset),
            "hours": sum(seconds) / 3600,
            "min_seconds": min(seconds, default=0.0),
            "max_seconds": max(seconds, default=0.0),
            "per_engine": dict(
                Counter(speaker.split(":")[0] for speaker in dataset["speaker"]).most_common()
            ),
            "per_speaker": dict(Counter(dataset["speaker"]).most_common()),
        }
    return summary
