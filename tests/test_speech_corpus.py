import glob
import importlib.util
import os

import numpy as np
import pytest
from datasets import load_from_disk

from vq_tokenizer.speech_corpus import (
    TEST_ESPEAK_VARIANTS,
    TEST_FLITE_VOICES,
    TRAIN_ESPEAK_VARIANTS,
    TRAIN_FLITE_VOICES,
    build_speech_corpus,
    corpus_features,
    summarize,
)


def _load_script(name: str):
    path = os.path.join(os.path.dirname(__file__), "..", "training", name)
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ALSA_FILES = sorted(os.path.basename(p) for p in glob.glob("/usr/share/sounds/alsa/*.wav"))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("speech")
    build_speech_corpus(output_dir, num_train=8, num_test=4, seed=3)
    return output_dir


@pytest.fixture(scope="module")
def corpus(corpus_dir):
    return load_from_disk(str(corpus_dir))


def test_tiny_corpus_reads_back_with_its_schema(corpus):
    assert set(corpus) == {"train", "test"}
    assert len(corpus["train"]) == 8
    assert len(corpus["test"]) == 4 + len(ALSA_FILES)
    for split in corpus.values():
        assert split.features == corpus_features()


def test_splits_share_no_text(corpus):
    train_text = set(corpus["train"]["text"])
    assert len(train_text) == 8 and all(train_text)
    assert not train_text & set(corpus["test"]["text"])


def test_clips_are_16khz_mono_float32_finite_and_not_silent(corpus):
    for split in corpus.values():
        for row in split.with_format("numpy"):
            audio = row["audio"]
            assert row["sampling_rate"] == 16000
            assert audio.dtype == np.float32 and audio.ndim == 1
            assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
            assert 0.5 < len(audio) / 16000 <= 10.0
            assert np.sqrt(np.mean(audio**2)) > 1e-3, row["source"]


def test_sources_name_engines_and_held_out_voices(corpus):
    train_sources = corpus["train"]["source"]
    assert all(s.startswith(("espeak-ng:", "flite:")) for s in train_sources)
    assert all("@" in s for s in train_sources)  # speed/pitch recorded
    synthetic_test = [s for s in corpus["test"]["speaker"] if s != "alsa"]
    assert len(synthetic_test) == 4
    assert not set(synthetic_test) & set(corpus["train"]["speaker"])
    assert not set(TRAIN_ESPEAK_VARIANTS) & set(TEST_ESPEAK_VARIANTS)
    assert not set(TRAIN_FLITE_VOICES) & set(TEST_FLITE_VOICES)


def test_alsa_recordings_are_in_test_only(corpus):
    alsa = [s for s in corpus["test"]["source"] if s.startswith("alsa:")]
    assert sorted(s.removeprefix("alsa:") for s in alsa) == ALSA_FILES
    assert not any(s.startswith("alsa:") for s in corpus["train"]["source"])
    texts = dict(zip(corpus["test"]["source"], corpus["test"]["text"], strict=True))
    assert texts["alsa:Front_Center.wav"] == "Front center"


def test_same_seed_same_corpus_and_max_seconds(corpus):
    again = build_speech_corpus(None, num_train=8, num_test=4, seed=3)
    assert again["train"]["source"] == corpus["train"]["source"]
    np.testing.assert_array_equal(
        again["train"].with_format("numpy")[5]["audio"], corpus["train"].with_format("numpy")[5]["audio"]
    )
    other = build_speech_corpus(None, num_train=8, num_test=0, seed=4, max_seconds=3.0)
    assert not set(other["train"]["text"]) & set(corpus["train"]["text"])
    assert max(len(a) for a in other["train"]["audio"]) <= 3 * 16000
    assert len(other["test"]) == len(ALSA_FILES)  # num_test=0: the real recordings only


def test_summary_and_cli(tmp_path, capsys):
    main = _load_script("make_speech_corpus.py").main
    main(["--output_dir", str(tmp_path / "cli"), "--num_train", "3", "--num_test", "1", "--seed", "1"])
    printed = capsys.readouterr().out
    assert "train: 3 clips" in printed and "per engine" in printed
    stats = summarize(load_from_disk(str(tmp_path / "cli")))
    assert stats["train"]["clips"] == 3 and stats["test"]["per_engine"]["alsa"] == len(ALSA_FILES)
    assert 0 < stats["train"]["hours"] < 0.01


def test_clip_groups_of_the_test_split(corpus):
    from collections import Counter

    from vq_tokenizer.speech_corpus import clip_group

    groups = Counter(
        clip_group(speaker, source)
        for speaker, source in zip(corpus["test"]["speaker"], corpus["test"]["source"], strict=True)
    )
    assert groups["synthetic"] == 4
    assert groups["noise"] == ("Noise.wav" in ALSA_FILES)
    assert groups["recorded"] == len(ALSA_FILES) - groups["noise"]
    train = zip(corpus["train"]["speaker"], corpus["train"]["source"], strict=True)
    assert {clip_group(speaker, source) for speaker, source in train} == {"synthetic"}
    assert clip_group(None, None) == "all"
    assert clip_group("someone", "librispeech:1234") == "all"
    assert clip_group(None, "alsa:Noise.wav") == "noise"
    assert clip_group(None, "alsa:Front_Left.wav") == "recorded"
    assert clip_group(None, "flite:kal@duration_stretch=1.00") == "synthetic"
