"""The transformers versions this package is tested with, checked before anything imports transformers.

`vq_tokenizer/__init__.py` calls `check_transformers_version()` first: an older transformers otherwise fails
later with an error that does not say what is wrong (5.15, for one, has no image-processor backends, and
`AutoImageProcessor` is a placeholder there without torchvision).
"""

from __future__ import annotations

import re
import warnings
from importlib import metadata

# Keep in step with the `transformers` requirement in pyproject.toml: the range the test suite runs against.
MIN_TRANSFORMERS = "5.24.0"
NEXT_MAJOR = "6"


def check_transformers_version(installed: str | None = None) -> None:
    """Raise `ImportError` if the installed transformers is older than `MIN_TRANSFORMERS`; warn on a newer major.

    Reads the installed version from the package metadata, without importing transformers.
    """
    if installed is None:
        try:
            installed = metadata.version("transformers")
        except metadata.PackageNotFoundError:
            raise ImportError(
                f"vq_tokenizer needs transformers>={MIN_TRANSFORMERS},<{NEXT_MAJOR}, which is not installed: "
                f"pip install 'transformers>={MIN_TRANSFORMERS},<{NEXT_MAJOR}'"
            ) from None
    version = _release(installed)
    if version < _release(MIN_TRANSFORMERS):
        raise ImportError(
            f"vq_tokenizer needs transformers>={MIN_TRANSFORMERS},<{NEXT_MAJOR}, but transformers {installed} is "
            f"installed: pip install -U 'transformers>={MIN_TRANSFORMERS},<{NEXT_MAJOR}'"
        )
    if version >= _release(NEXT_MAJOR):
        warnings.warn(
            f"vq_tokenizer is tested with transformers>={MIN_TRANSFORMERS},<{NEXT_MAJOR}; transformers {installed} "
            "is installed and may not work with it.",
            stacklevel=2,
        )


def _release(version: str) -> tuple[int, ...]:
    """`"5.24.0.dev0"` -> `(5, 24, 0)`: the numeric release, without depending on `packaging`."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    if match is None:
        raise ImportError(f"Cannot read the transformers version {version!r}.")
    parts = [int(part) for part in match.group().split(".")]
    return tuple(parts + [0] * (3 - len(parts)))
