"""Datasets for training and evaluating tokenizers, all through `datasets`.

Images: the Fashion-MNIST default (read from Debian's `dataset-fashion-mnist` IDX files when present,
else the Hub dataset), an `imagefolder` path, a `save_to_disk` folder or any `datasets` id, streaming
included. Audio: `speech_corpus` (the offline speech corpus, synthesised and cached on first use), a
`save_to_disk` folder (e.g. one written by `training/make_speech_corpus.py`) or any dataset whose audio
column holds float arrays or encoded bytes, with a sampling-rate column (decoded with soundfile, because
`datasets`' own Audio decoding needs torchcodec).
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import datasets
import numpy as np

logger = logging.getLogger(__name__)

FASHION_MNIST_NAMES = ("fashion_mnist", "fashion-mnist", "zalando-datasets/fashion_mnist")
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_COLUMN_CANDIDATES = ("image", "img", "pixel_values", "picture", "photo")
AUDIO_COLUMN_CANDIDATES = ("audio", "waveform", "speech", "input_values", "array")
# `--dataset_name speech_corpus`: the offline espeak-ng/flite/ALSA corpus, built on first use.
SPEECH_CORPUS_NAMES = ("speech_corpus",)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number).")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != expected:
        raise ValueError(f"{path} is truncated: {values.size} values for shape {dims}.")
    return values.reshape(dims)


def _fashion_mnist_dir() -> Path | None:
    for folder in (os.environ.get("FASHION_MNIST_DIR"), *FASHION_MNIST_DIRS):
        if folder and all((Path(folder) / name).exists() for files in _IDX_FILES.values() for name in files):
            return Path(folder)
    return None


def _default_cache_dir() -> Path:
    root = os.environ.get("VQ_TOKENIZER_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")
    )
    return Path(root) / "vq_tokenizer"


def load_fashion_mnist(cache_dir: str | os.PathLike | None = None) -> datasets.DatasetDict:
    """Fashion-MNIST as a `DatasetDict` (`train` 60k, `test` 10k; columns `image` (PIL), `label`).

    Read from the Debian package `dataset-fashion-mnist` (or `$FASHION_MNIST_DIR`) and cached with
    `save_to_disk`; without those files, the Hub dataset `zalando-datasets/fashion_mnist`.
    """
    source = _fashion_mnist_dir()
    if source is None:
        try:
            return datasets.load_dataset(FASHION_MNIST_HUB_ID)
        except Exception as error:  # noqa: BLE001 - re-raised with the way out
            raise RuntimeError(
                "Fashion-MNIST is not available: install the Debian package (`apt-get install "
                "dataset-fashion-mnist`), or set FASHION_MNIST_DIR to a folder with the four IDX .gz files, "
                f"or make the Hub dataset {FASHION_MNIST_HUB_ID!r} reachable."
            ) from error
    cache = Path(cache_dir or _default_cache_dir()) / "fashion_mnist"
    if (cache / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(cache))
    features = datasets.Features(
        image=datasets.Image(), label=datasets.ClassLabel(names=list(FASHION_MNIST_LABELS))
    )
    splits = {}
    for split, (images_file, labels_file) in _IDX_FILES.items():
        images = read_idx(source / images_file)
        labels = read_idx(source / labels_file)
        splits[split] = datasets.Dataset.from_dict(
            {"image": list(images), "label": labels.astype(np.int64)}, features=features
        )
    dataset = datasets.DatasetDict(splits)
    # Write beside, then rename: a killed first run never leaves a half-written cache behind.
    partial = cache.with_name(cache.name + f".partial-{os.getpid()}")
    dataset.save_to_disk(str(partial))
    try:
        partial.rename(cache)
    except OSError:  # another process got there first
        pass
    return datasets.load_from_disk(str(cache)) if cache.exists() else dataset


def find_column(
    column_names: list[str], candidates: tuple[str, ...], kind: str, given: str | None = None
) -> str:
    """The column to read: `given` if set (and present), else the first known name for `kind`."""
    if given is not None:
        if given not in column_names:
            raise ValueError(f"Column {given!r} is not in the dataset; its columns are {column_names}.")
        return given
    for name in candidates:
        if name in column_names:
            return name
    raise ValueError(
        f"No {kind} column found among {column_names}; pass the column name (e.g. `--{kind}_column`)."
    )


def load_image_dataset(
    name_or_path: str = "fashion_mnist",
    split: str = "train",
    dataset_config: str | None = None,
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """One split of an image dataset: Fashion-MNIST, an imagefolder path, a `save_to_disk` folder, or a Hub id."""
    if name_or_path in FASHION_MNIST_NAMES and _fashion_mnist_dir() is not None:
        dataset = load_fashion_mnist()[split]
        return dataset.to_iterable_dataset() if streaming else dataset
    return _load_split(name_or_path, split, dataset_config, streaming, builder="imagefolder")


def load_speech_corpus(
    num_train: int = 400, num_test: int = 40, seed: int = 0, cache_dir: str | os.PathLike | None = None
) -> datasets.DatasetDict:
    """The offline speech corpus of `vq_tokenizer.speech_corpus`, synthesised on first use and cached.

    The cache folder is named after the arguments (`speech_corpus-400-40-seed0` under the cache of
    `load_fashion_mnist`); processes that ask at once wait on a file lock, so it is built only once.
    """
    from filelock import FileLock

    from .speech_corpus import build_speech_corpus

    cache = Path(cache_dir or _default_cache_dir()) / f"speech_corpus-{num_train}-{num_test}-seed{seed}"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache) + ".lock"):
        if not (cache / "dataset_dict.json").exists():
            logger.info("Building the speech corpus into %s (once; a minute or two).", cache)
            partial = cache.with_name(cache.name + f".partial-{os.getpid()}")
            build_speech_corpus(partial, num_train=num_train, num_test=num_test, seed=seed)
            partial.rename(cache)
    return datasets.load_from_disk(str(cache))


def load_audio_dataset(
    name_or_path: str,
    split: str = "train",
    dataset_config: str | None = None,
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """One split of an audio dataset: `speech_corpus` (built and cached on first use, see
    `load_speech_corpus`), a `save_to_disk` folder, an audiofolder path or a Hub id."""
    if name_or_path in SPEECH_CORPUS_NAMES and not Path(name_or_path).exists():
        dataset = load_speech_corpus()[split]
        return dataset.to_iterable_dataset() if streaming else dataset
    return _load_split(name_or_path, split, dataset_config, streaming, builder="audiofolder")


def prepare_audio_column(dataset, column: str):
    """Make `column` cheap to read as arrays: encoded `Audio` cells stay undecoded (`{"bytes", "path"}`,
    decoded by `decode_audio_example` with soundfile, since `datasets`' decoding needs torchcodec), and
    float lists come out as numpy arrays instead of Python lists."""
    feature = (dataset.features or {}).get(column)
    if isinstance(feature, datasets.Audio):
        return dataset.cast_column(column, datasets.Audio(decode=False))
    if feature is not None and isinstance(dataset, datasets.Dataset):
        return dataset.with_format("numpy", columns=[column], output_all_columns=True)
    return dataset


def feature_extract_batch(feature_extractor, arrays: list[np.ndarray], rates: list[int | None]):
    """`input_values` + `padding_mask` tensors for items whose sampling rates may differ (each is
    resampled to the extractor's rate first)."""
    rates = [rate or feature_extractor.sampling_rate for rate in rates]
    if len(set(rates)) == 1:
        return feature_extractor(arrays, sampling_rate=rates[0], return_tensors="pt")
    resampled = [
        feature_extractor(array, sampling_rate=rate, padding=False)["input_values"][0]
        for array, rate in zip(arrays, rates, strict=True)
    ]
    return feature_extractor(resampled, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")


def _load_split(name_or_path, split, dataset_config, streaming, builder):
    path = Path(name_or_path)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return dataset.to_iterable_dataset() if streaming else dataset
    if path.is_dir():
        if builder == "audiofolder":
            raise ValueError(
                f"{path} is a plain folder; audio folders need torchcodec to decode here. Build a dataset "
                "with `training/make_speech_corpus.py` or `datasets.Dataset.save_to_disk` (float arrays + "
                "`sampling_rate`) and pass that folder."
            )
        return datasets.load_dataset(builder, data_dir=str(path), split=split, streaming=streaming)
    return datasets.load_dataset(name_or_path, dataset_config, split=split, streaming=streaming)


def decode_audio_example(value, sampling_rate: int | None = None) -> tuple[np.ndarray, int | None]:
    """An audio cell (float array, `{"array", "sampling_rate"}`, `{"bytes"}` or a path) -> (float32 array, sr)."""
    import soundfile

    if isinstance(value, dict):
        if value.get("array") is not None:
            return np.asarray(value["array"], dtype=np.float32), value.get("sampling_rate", sampling_rate)
        if value.get("bytes") is not None:
            import io

            array, sr = soundfile.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=True)
            return array.T, sr
        if value.get("path") is not None:
            value = value["path"]
    if isinstance(value, (str, os.PathLike)):
        array, sr = soundfile.read(value, dtype="float32", always_2d=True)
        return array.T, sr
    if isinstance(value, (bytes, bytearray)):
        import io

        array, sr = soundfile.read(io.BytesIO(value), dtype="float32", always_2d=True)
        return array.T, sr
    return np.asarray(value, dtype=np.float32), sampling_rate
