"""One object per modality (image, audio) holding everything that differs between them.

    modality = modality_for(model.config)            # or get_modality("audio")
    column = modality.find_column(dataset.column_names)
    loader = DataLoader(dataset, collate_fn=functools.partial(modality.collate_examples, processor, column=column))

See `Modality` for what each one answers.
"""

from __future__ import annotations

from pathlib import Path

from .audio import AUDIO_COLUMN_CANDIDATES, AUDIO_SUFFIXES, AudioModality
from .base import Measurement, Modality, find_column
from .image import IMAGE_COLUMN_CANDIDATES, IMAGE_SUFFIXES, ImageModality

__all__ = [
    "AUDIO",
    "AUDIO_COLUMN_CANDIDATES",
    "AUDIO_SUFFIXES",
    "IMAGE",
    "IMAGE_COLUMN_CANDIDATES",
    "IMAGE_SUFFIXES",
    "MODALITIES",
    "AudioModality",
    "ImageModality",
    "Measurement",
    "Modality",
    "find_column",
    "get_modality",
    "modality_for",
    "modality_of_file",
]

IMAGE = ImageModality()
AUDIO = AudioModality()
MODALITIES: dict[str, Modality] = {modality.name: modality for modality in (IMAGE, AUDIO)}


def get_modality(name: str) -> Modality:
    """The modality called `name` ("image" or "audio")."""
    try:
        return MODALITIES[name]
    except KeyError:
        raise ValueError(f"Unknown modality {name!r}; expected one of {sorted(MODALITIES)}.") from None


def modality_for(config) -> Modality:
    """The modality of a `VQVAEConfig` (or of a model, through its `config`)."""
    return get_modality(getattr(config, "config", config).modality)


def modality_of_file(path: str | Path) -> Modality:
    """The modality whose files have `path`'s suffix; a ValueError that lists the known suffixes otherwise."""
    for modality in MODALITIES.values():
        if modality.accepts(path):
            return modality
    path = Path(path)
    known = "; ".join(f"{m.name}: {' '.join(m.file_suffixes)}" for m in MODALITIES.values())
    raise ValueError(
        f"{path}: unknown file type {path.suffix or '(no suffix)'!r}; {known} (convert others first, e.g. "
        "`ffmpeg -i in.m4a out.wav` or `convert in.heic out.png`)"
    )
