"""Datasets for training and evaluating tokenizers, all through `datasets`.

Images: the Fashion-MNIST default (read from Debian's `dataset-fashion-mnist` IDX files when present,
else the Hub dataset), an `imagefolder` path, a `save_to_disk` folder or any `datasets` id, streaming
included. Audio: `speech_corpus` (the offline speech corpus, synthesised and cached on first use), a
`save_to_disk` folder (e.g. one written by `training/make_speech_corpus.py`) or any dataset whose audio
column holds float arrays or encoded bytes, with a sampling-rate column (decoded with soundfile, because
`datasets`' own Audio decoding needs torchcodec).

Which column holds the input, and how its cells become a batch, is the modality's business
(`vq_tokenizer.modalities`); `load_split(..., folder_builder=modality.folder_builder)` loads any of the above.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import datasets
import numpy as np

from .media_io import decode_audio_example
from .modalities import AUDIO_COLUMN_CANDIDATES, IMAGE_COLUMN_CANDIDATES, find_column
from .modalities.audio import audio_batch, prepare_audio_column

logger = logging.getLogger(__name__)

__all__ = [
    "DATA_FILE_SUFFIXES",
    "FASHION_MNIST_LABELS",
    "is_data_files_folder",
    "is_saved_dataset",
    "load_audio_dataset",
    "load_fashion_mnist",
    "load_image_dataset",
    "load_speech_corpus",
    "load_split",
    "read_idx",
    # Re-exported for training/train_vqvae.py (see the end of this module).
    "AUDIO_COLUMN_CANDIDATES",
    "IMAGE_COLUMN_CANDIDATES",
    "decode_audio_example",
    "feature_extract_batch",
    "find_column",
    "prepare_audio_column",
]

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
# Files that `datasets` reads as tables: a folder of them (and a card) is loaded with `datasets.load_dataset(folder)`.
DATA_FILE_SUFFIXES = (".parquet", ".arrow", ".csv", ".json", ".jsonl")
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


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by `save_to_disk` (a `Dataset` or a `DatasetDict`)."""
    path = Path(path)
    return (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()


def is_data_files_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder of data files that `datasets.load_dataset(path)` reads as a table (parquet,
    arrow, csv, json; a README.md card beside them), rather than a folder of images or clips. Hidden files and
    folders (`.git`, `.cache`) do not count; the first other file decides, so a large media folder is not walked."""
    path = Path(path)
    if not path.is_dir():
        return False
    found = False
    for file in path.rglob("*"):
        if any(part.startswith(".") for part in file.relative_to(path).parts) or not file.is_file():
            continue
        suffix = file.suffix.lower()
        if suffix in DATA_FILE_SUFFIXES:
            found = True
        elif suffix != ".md":
            return False
    return found


def load_split(
    name_or_path: str = "fashion_mnist",
    split: str = "train",
    dataset_config: str | None = None,
    streaming: bool = False,
    folder_builder: str = "imagefolder",
) -> datasets.Dataset | datasets.IterableDataset:
    """One split of a dataset: `fashion_mnist` (the local IDX files when present, see `load_fashion_mnist`),
    `speech_corpus` (built and cached on first use, see `load_speech_corpus`), a `save_to_disk` folder, a
    folder of data files (parquet, arrow, csv, json: e.g. a `to_parquet` export or a `vq-tokenizer
    encode-dataset` output, read by `datasets`, which picks the builder from the files and the card), a plain
    folder of media files (read by `folder_builder`, the modality's: `imagefolder` or `audiofolder`), or a
    Hub id."""
    if name_or_path in FASHION_MNIST_NAMES and _fashion_mnist_dir() is not None:
        dataset = load_fashion_mnist()[split]
        return dataset.to_iterable_dataset() if streaming else dataset
    if name_or_path in SPEECH_CORPUS_NAMES and not Path(name_or_path).exists():
        dataset = load_speech_corpus()[split]
        return dataset.to_iterable_dataset() if streaming else dataset
    path = Path(name_or_path)
    if is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return dataset.to_iterable_dataset() if streaming else dataset
    if is_data_files_folder(path):
        return datasets.load_dataset(str(path), dataset_config, split=split, streaming=streaming)
    if path.is_dir():
        if folder_builder == "audiofolder":
            raise ValueError(
                f"{path} is a plain folder; audio folders need torchcodec to decode here. Build a dataset "
                "with `training/make_speech_corpus.py` or `datasets.Dataset.save_to_disk` (float arrays + "
                "`sampling_rate`) and pass that folder."
            )
        return datasets.load_dataset(folder_builder, data_dir=str(path), split=split, streaming=streaming)
    return datasets.load_dataset(name_or_path, dataset_config, split=split, streaming=streaming)


def load_image_dataset(
    name_or_path: str = "fashion_mnist",
    split: str = "train",
    dataset_config: str | None = None,
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """`load_split` with plain folders read as images."""
    return load_split(name_or_path, split, dataset_config, streaming, folder_builder="imagefolder")


def load_audio_dataset(
    name_or_path: str,
    split: str = "train",
    dataset_config: str | None = None,
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """`load_split` with plain folders read as audio."""
    return load_split(name_or_path, split, dataset_config, streaming, folder_builder="audiofolder")


# Until training/train_vqvae.py asks the modality (`vq_tokenizer.modalities`), it imports the names below
# `__all__`'s comment from here; they live in `modalities` and `media_io`.
feature_extract_batch = audio_batch
