"""Loading, encoding and decoding need only the core dependencies (pyproject's `dependencies`).

The check runs in a subprocess whose import path is a copy of this environment's site-packages (symbolic
links) without the optional packages: no scikit-image, matplotlib, tensorboard, jinja2, soundfile or scipy.
`python -S` keeps the real site-packages off the path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import torch
from tiny import tiny_config

from vq_tokenizer import VQVAEImageProcessor, VQVAEModel

REPO = Path(__file__).resolve().parents[1]
# Top-level names (modules and their dist-info folders) of the optional extras.
OPTIONAL = ("skimage", "scikit_image", "matplotlib", "mpl_toolkits", "tensorboard", "jinja2", "soundfile",
            "_soundfile", "scipy")  # fmt: skip


def _core_only_site(tmp_path: Path) -> Path:
    site = Path(sysconfig.get_paths()["purelib"])
    core = tmp_path / "core-site"
    core.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower().replace("-", "_")
        if any(name == opt or name.startswith(opt + ".") or name.startswith(opt + "_") for opt in OPTIONAL):
            continue
        (core / entry.name).symlink_to(entry)
    return core


def test_load_encode_decode_without_optional_packages(tmp_path):
    model = VQVAEModel(tiny_config(in_channels=1)).eval()
    model.save_pretrained(tmp_path / "model")
    VQVAEImageProcessor(num_channels=1, size_divisor=model.config.downsampling_factor).save_pretrained(
        tmp_path / "model"
    )
    images = torch.rand(2, 1, 16, 16).numpy()
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(images) * 2 - 1).codes
    torch.save({"images": torch.from_numpy(images), "codes": expected}, tmp_path / "data.pt")

    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoImageProcessor, AutoModel
        import vq_tokenizer
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}).eval()
        processor = AutoImageProcessor.from_pretrained({str(tmp_path / "model")!r})
        data = torch.load({str(tmp_path / "data.pt")!r})
        pixel_values = processor(list(data["images"].numpy()), return_tensors="pt").pixel_values
        codes = model.encode(pixel_values).codes
        assert torch.equal(codes, data["codes"]), (codes, data["codes"])
        pictures = processor.postprocess(model.decode(codes).reconstruction)
        assert len(pictures) == 2
        blocked = [name for name in {list(OPTIONAL)!r} if name in sys.modules]
        assert not blocked, blocked
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_core_only_site(tmp_path)), str(REPO)])}
    result = subprocess.run(
        [sys.executable, "-S", "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_optional_packages_are_really_hidden(tmp_path):
    """The check above means something: in the same environment, an optional package cannot be imported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_core_only_site(tmp_path)), str(REPO)])}
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import scipy"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode != 0 and "No module named 'scipy'" in result.stderr
