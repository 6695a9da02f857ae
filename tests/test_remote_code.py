"""A saved model loads with `trust_remote_code=True` in a process where `vq_tokenizer` cannot be imported."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from tiny import tiny_config

from vq_tokenizer import VQVAEModel

CHILD_SCRIPT = textwrap.dedent(
    """
    import sys

    sys.modules["vq_tokenizer"] = None  # any `import vq_tokenizer` now raises ImportError

    import json

    import torch
    from transformers import AutoModel

    folder, tensors_path, result_path = sys.argv[1:4]
    try:
        import vq_tokenizer  # noqa: F401

        importable = True
    except ImportError:
        importable = False

    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    tensors = torch.load(tensors_path)
    with torch.no_grad():
        codes = model.encode(tensors["pixel_values"]).codes
        reconstruction = model.decode(codes).reconstruction
        forward = model(tensors["pixel_values"]).reconstruction
    torch.save({"codes": codes, "reconstruction": reconstruction, "forward": forward}, result_path)
    print(json.dumps({
        "importable": importable,
        "model_module": type(model).__module__,
        "config_module": type(model.config).__module__,
        "class_name": type(model).__name__,
        "loaded_modules": sorted(
            name for name, module in sys.modules.items() if name.startswith("vq_tokenizer") and module
        ),
    }))
    """
)


def test_trust_remote_code_without_the_package(tmp_path):
    torch.manual_seed(0)
    config = tiny_config()
    model = VQVAEModel(config).train()
    pixel_values = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    model(pixel_values).loss.backward()  # one training forward: k-means initialised codebook
    model.eval()
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    # The code travels with the weights.
    assert {"configuration_vqvae.py", "modeling_vqvae.py"} <= set(os.listdir(folder))
    saved_config = json.loads((folder / "config.json").read_text())
    assert saved_config["auto_map"] == {
        "AutoConfig": "configuration_vqvae.VQVAEConfig",
        "AutoModel": "modeling_vqvae.VQVAEModel",
    }

    with torch.no_grad():
        codes = model.encode(pixel_values).codes
        expected = model.decode(codes).reconstruction
        expected_forward = model(pixel_values).reconstruction
    torch.save({"pixel_values": pixel_values}, tmp_path / "inputs.pt")

    script = tmp_path / "child.py"
    script.write_text(CHILD_SCRIPT)
    env = dict(os.environ)
    env.update(
        HF_HOME=str(tmp_path / "hf_home"),
        HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
        HF_HUB_OFFLINE="1",
        PYTHONPATH="",  # nothing that could hold vq_tokenizer
    )
    completed = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "inputs.pt"), str(tmp_path / "result.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])

    assert report["importable"] is False
    assert report["loaded_modules"] == []
    assert report["class_name"] == "VQVAEModel"
    assert report["model_module"].startswith("transformers_modules.")
    assert report["model_module"].endswith(".modeling_vqvae")
    assert report["config_module"].startswith("transformers_modules.")
    assert (tmp_path / "hf_modules" / "transformers_modules").is_dir()

    result = torch.load(tmp_path / "result.pt")
    assert torch.equal(result["codes"], codes)
    assert torch.equal(result["reconstruction"], expected)
    assert torch.equal(result["forward"], expected_forward)
