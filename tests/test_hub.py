"""Push to and load from the Hub: the real huggingface_hub client against the local server (tests/conftest.py).

Covers `model.push_to_hub`, `processor.push_to_hub`, the card, loading by repo id and by commit sha,
`trust_remote_code` without this package, the offline cache, the library's own errors, interrupted
downloads, a failed push, where the token goes, and `train_vqvae.py --push_to_hub`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client: what an interrupted download raises
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard, hf_hub_download, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError
from transformers import AutoImageProcessor, AutoModel

from vq_tokenizer import VQVAEConfig, VQVAEImageProcessor, VQVAEModel
from vq_tokenizer.model_card import build_model_card

REPO = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=16, residual_hidden_size=8, num_residual_layers=1, codebook_size=32, codebook_dim=8)
CONFIG = VQVAEConfig(modality="image", in_channels=1, downsampling_factor=4, **TINY)


def _model(seed: int) -> VQVAEModel:
    torch.manual_seed(seed)
    return VQVAEModel(CONFIG).eval()


def _outputs(model, pixel_values) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        output = model(pixel_values)
    return {"codes": output.codes, "reconstruction": output.reconstruction}


def _assert_same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


@pytest.fixture(scope="module")
def images():
    from vq_tokenizer.data import load_image_dataset

    return load_image_dataset("fashion_mnist", "test")[:4]["image"]


@pytest.fixture(scope="module")
def processor():
    return VQVAEImageProcessor(num_channels=1, size_divisor=CONFIG.downsampling_factor)


@pytest.fixture
def pushed(hub_api, hub_repo_id, hub_token, hub_cache, processor):
    """A public repo holding a tiny model, its processor and its card, each pushed the documented way."""
    model = _model(0)
    first = model.push_to_hub(hub_repo_id, token=hub_token)
    processor.push_to_hub(hub_repo_id, token=hub_token)
    card = build_model_card(
        CONFIG, {"psnr": 12.5, "codebook_usage": 0.5}, {"dataset_name": "fashion_mnist"}, hub_repo_id
    )
    card.push_to_hub(hub_repo_id, token=hub_token)
    return {
        "repo_id": hub_repo_id,
        "model": model,
        "model_commit": first.oid,
        "sha": hub_api.model_info(hub_repo_id).sha,
    }


def _run_child(code: str, *args: str, offline: bool = False, cwd: Path) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with this test's Hub settings (HF_ENDPOINT, HF_HOME, HF_HUB_CACHE...)."""
    # The parent's thread count: the same summation order, so the same float outputs to the bit.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    assert env["HF_HUB_CACHE"] and env["HF_ENDPOINT"] and env["HF_HOME"]
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    assert result.returncode == 0, f"child failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def test_push_model_processor_and_card_then_load_by_repo_id(pushed, hub_api, images, processor):
    repo_id = pushed["repo_id"]
    files = set(hub_api.list_repo_files(repo_id))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= files
    assert {"configuration_vqvae.py", "modeling_vqvae.py"} <= files  # for trust_remote_code
    pixel_values = processor(images, return_tensors="pt").pixel_values
    expected = _outputs(pushed["model"], pixel_values)

    by_class = VQVAEModel.from_pretrained(repo_id).eval()
    by_auto = AutoModel.from_pretrained(repo_id).eval()
    assert type(by_auto) is VQVAEModel
    _assert_same(_outputs(by_class, pixel_values), expected)
    _assert_same(_outputs(by_auto, pixel_values), expected)

    remote_processor = AutoImageProcessor.from_pretrained(repo_id)
    assert type(remote_processor) is VQVAEImageProcessor
    assert remote_processor.to_dict() == processor.to_dict()
    assert torch.equal(remote_processor(images, return_tensors="pt").pixel_values, pixel_values)

    card = ModelCard.load(repo_id)
    assert card.data.library_name == "vq_tokenizer" and card.data.eval_results[0].metric_value == 12.5
    assert f'VQVAEModel.from_pretrained("{repo_id}")' in card.text


def test_second_push_keeps_the_first_revision_by_commit_sha(pushed, hub_api, hub_token, images, processor):
    repo_id, first_sha = pushed["repo_id"], pushed["sha"]
    pixel_values = processor(images, return_tensors="pt").pixel_values
    old = _outputs(pushed["model"], pixel_values)
    VQVAEModel.from_pretrained(repo_id)  # cache `main` at the first revision: it must not be served stale

    new_model = _model(1)
    second = new_model.push_to_hub(repo_id, token=hub_token, commit_message="Retrained")
    assert second.oid != first_sha and hub_api.model_info(repo_id).sha == second.oid
    new = _outputs(new_model, pixel_values)
    assert not torch.equal(new["reconstruction"], old["reconstruction"])

    _assert_same(_outputs(VQVAEModel.from_pretrained(repo_id).eval(), pixel_values), new)  # main moved on
    first = VQVAEModel.from_pretrained(repo_id, revision=first_sha).eval()
    _assert_same(first.state_dict(), pushed["model"].state_dict())
    _assert_same(_outputs(first, pixel_values), old)
    _assert_same(
        _outputs(AutoModel.from_pretrained(repo_id, revision=pushed["model_commit"]).eval(), pixel_values),
        old,
    )
    assert AutoImageProcessor.from_pretrained(repo_id, revision=first_sha).to_dict() == processor.to_dict()
    titles = [commit.title for commit in hub_api.list_repo_commits(repo_id)]
    assert titles[0] == "Retrained" and len(titles) == 5  # initial, model, processor, card, retrained


# Put first in the child that must not see this package: `import vq_tokenizer` raises ImportError after it.
WITHOUT_THE_PACKAGE = """
import sys

sys.modules["vq_tokenizer"] = None
"""

LOADING_CHILD = """
import json
import sys

import torch
from huggingface_hub import constants
from transformers import AutoImageProcessor, AutoModel

repo_id, inputs_path, outputs_path, mode = sys.argv[1:5]
if mode == "remote-code":
    try:
        import vq_tokenizer  # noqa: F401
        raise SystemExit("vq_tokenizer is importable in the child")
    except ImportError:
        pass
else:
    import vq_tokenizer  # noqa: F401 - registers the Auto classes
    assert constants.HF_HUB_OFFLINE

remote_code = mode == "remote-code"
model = AutoModel.from_pretrained(repo_id, trust_remote_code=remote_code).eval()
processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=remote_code)
module = "transformers_modules." if remote_code else "vq_tokenizer."
assert type(model).__module__.startswith(module), type(model).__module__
assert type(processor).__module__.startswith(module), type(processor).__module__
pixel_values = processor(torch.load(inputs_path), return_tensors="pt").pixel_values
with torch.no_grad():
    output = model(pixel_values)
torch.save({"pixel_values": pixel_values, "codes": output.codes, "reconstruction": output.reconstruction}, outputs_path)
print(json.dumps(processor.to_dict()))
"""


def _load_in_child(repo_id: str, images, tmp_path: Path, mode: str) -> tuple[dict, dict]:
    """Load `repo_id` with the Auto classes in a fresh interpreter; its outputs on `images` and processor dict."""
    torch.save([torch.from_numpy(np.array(image)) for image in images], tmp_path / "images.pt")
    code = (WITHOUT_THE_PACKAGE if mode == "remote-code" else "") + LOADING_CHILD
    result = _run_child(
        code, repo_id, str(tmp_path / "images.pt"), str(tmp_path / "out.pt"), mode,
        offline=mode == "offline", cwd=tmp_path,
    )  # fmt: skip
    return torch.load(tmp_path / "out.pt"), json.loads(result.stdout.strip().splitlines()[-1])


def _expected(model, processor, images) -> dict:
    pixel_values = processor(images, return_tensors="pt").pixel_values
    return {"pixel_values": pixel_values, **_outputs(model, pixel_values)}


def test_trust_remote_code_loads_without_the_package(pushed, images, processor, tmp_path):
    outputs, processor_dict = _load_in_child(pushed["repo_id"], images, tmp_path, "remote-code")
    _assert_same(outputs, _expected(pushed["model"], processor, images))
    assert processor_dict["size_divisor"] == processor.size_divisor


def test_cache_is_reused_offline(pushed, hub_server, images, processor, hub_cache, tmp_path):
    repo_id = pushed["repo_id"]
    AutoModel.from_pretrained(repo_id)  # the one download
    AutoImageProcessor.from_pretrained(repo_id)
    assert any(hub_cache.rglob("model.safetensors"))
    seen = len(hub_server.requests)
    outputs, processor_dict = _load_in_child(repo_id, images, tmp_path, "offline")
    _assert_same(outputs, _expected(pushed["model"], processor, images))
    assert processor_dict == json.loads(json.dumps(processor.to_dict()))
    assert [r.path for r in hub_server.requests[seen:]] == [], "offline loading went to the server"


def test_missing_repo_missing_file_and_private_repo_raise_the_librarys_errors(
    hub_api, hub_user, hub_repo_id, hub_token, hub_other_token, hub_cache
):
    missing = f"{hub_user}/no-such-tokenizer-{hub_repo_id[-8:]}"
    with pytest.raises(RepositoryNotFoundError, match=re.escape(missing)):
        hf_hub_download(missing, "config.json")
    with pytest.raises(OSError, match=re.escape(missing)) as error:
        VQVAEModel.from_pretrained(missing)
    assert isinstance(error.value.__cause__, RepositoryNotFoundError)

    config_only = f"{hub_repo_id}-config-only"
    CONFIG.push_to_hub(config_only, token=hub_token)
    with pytest.raises(EntryNotFoundError, match="missing.safetensors"):
        hf_hub_download(config_only, "missing.safetensors")
    with pytest.raises(OSError, match=rf"{re.escape(config_only)} has no model\.safetensors"):
        VQVAEModel.from_pretrained(config_only)
    with pytest.raises(OSError, match=f"{re.escape(config_only)}.*preprocessor_config.json"):
        AutoImageProcessor.from_pretrained(config_only)

    private = f"{hub_repo_id}-private"
    hub_api.create_repo(private, private=True)
    _model(0).push_to_hub(private, token=hub_token)
    for token in (None, hub_other_token):  # no token; another user's token
        with pytest.raises(OSError, match=re.escape(private)) as error:
            VQVAEModel.from_pretrained(private, token=token)
        assert isinstance(error.value.__cause__, RepositoryNotFoundError)
        with pytest.raises(RepositoryNotFoundError, match=re.escape(private)):
            hf_hub_download(private, "config.json", token=token)
    assert VQVAEModel.from_pretrained(private, token=hub_token).config.codebook_size == 32


def _complete_blobs(cache: Path) -> dict[str, bytes]:
    """Blobs the cache holds as complete, checked against their names: a blob is named by its ETag, the
    sha256 of an LFS file or the git blob id of a regular one, so a partial file would not match."""
    blobs = {}
    for path in cache.rglob("blobs/*"):
        if path.is_file() and not path.name.endswith(".incomplete"):
            data = path.read_bytes()
            digest = (
                hashlib.sha256(data)
                if len(path.name) == 64
                else hashlib.sha1(b"blob %d\0" % len(data) + data)
            )
            assert digest.hexdigest() == path.name, f"{path} does not hold what its name says"
            blobs[path.name] = data
    return blobs


def test_interrupted_download_is_retried_and_never_cached_partial(
    pushed, hub_faults, hub_api, hub_cache, images, processor
):
    """The client's own retry: a cut body is fetched again; a file that never arrives whole is not cached."""
    repo_id = pushed["repo_id"]
    weights = next(
        s
        for s in hub_api.model_info(repo_id, files_metadata=True).siblings
        if s.rfilename == "model.safetensors"
    )

    # Every try cut in half: the client gives up (1 try + 5 resumes), and the cache has no weights at all.
    always = hub_faults.inject_fault(
        method="GET", path_contains=f"{repo_id}/resolve/", kind="truncate", times=6
    )
    with pytest.raises(httpx2.RemoteProtocolError, match="peer closed connection"):
        hf_hub_download(repo_id, "model.safetensors")
    assert always.hits == 6
    assert try_to_load_from_cache(repo_id, "model.safetensors") is None
    assert not any(hub_cache.rglob("model.safetensors")), "no snapshot entry for a partial file"
    assert weights.lfs.sha256 not in _complete_blobs(hub_cache)

    # One cut: the client resumes and `from_pretrained` gets the exact bytes.
    once = hub_faults.inject_fault(method="GET", path_contains="/model.safetensors", kind="truncate", times=1)
    model = VQVAEModel.from_pretrained(repo_id).eval()
    assert once.hits == 1
    _assert_same(
        _outputs(model, processor(images, return_tensors="pt").pixel_values),
        _outputs(pushed["model"], processor(images, return_tensors="pt").pixel_values),
    )
    cached = Path(try_to_load_from_cache(repo_id, "model.safetensors"))
    assert cached.stat().st_size == weights.size
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == weights.lfs.sha256
    assert weights.lfs.sha256 in _complete_blobs(hub_cache)
    assert not list(hub_cache.rglob("*.incomplete"))


def test_server_error_mid_push_leaves_the_previous_commit(
    pushed, hub_faults, hub_api, hub_token, images, processor
):
    repo_id, before = pushed["repo_id"], pushed["sha"]
    fault = hub_faults.inject_fault(method="POST", path_contains=f"{repo_id}/commit/", kind="500", times=1)
    with pytest.raises(HfHubHTTPError) as error:
        _model(1).push_to_hub(repo_id, token=hub_token)
    assert error.value.response.status_code == 500 and fault.hits == 1
    assert hub_token not in str(error.value)
    assert hub_api.model_info(repo_id).sha == before
    pixel_values = processor(images, return_tensors="pt").pixel_values
    _assert_same(
        _outputs(VQVAEModel.from_pretrained(repo_id).eval(), pixel_values),
        _outputs(pushed["model"], pixel_values),
    )
    # The fault is spent: the same push now goes through.
    assert _model(1).push_to_hub(repo_id, token=hub_token).oid == hub_api.model_info(repo_id).sha != before


def test_token_only_travels_in_the_authorization_header(
    hub_server, hub_api, hub_repo_id, hub_token, hub_cache, processor, caplog, capfd
):
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.get_verbosity(), hub_logging.get_verbosity()
    transformers_logging.set_verbosity_debug()
    transformers_logging.enable_propagation()
    hub_logging.set_verbosity_debug()
    hub_logging.enable_propagation()
    caplog.set_level(logging.DEBUG)
    seen = len(hub_server.requests)
    try:
        hub_api.create_repo(hub_repo_id, private=True)
        model = _model(0)
        model.push_to_hub(hub_repo_id, token=hub_token)
        processor.push_to_hub(hub_repo_id, token=hub_token)
        card = build_model_card(
            CONFIG,
            {"psnr": 10.0},
            {"hub_token": hub_token, "command": f"x --hub_token {hub_token}"},
            hub_repo_id,
        )
        card.push_to_hub(hub_repo_id, token=hub_token)
        VQVAEModel.from_pretrained(hub_repo_id, token=hub_token)
        AutoImageProcessor.from_pretrained(hub_repo_id, token=hub_token)
    finally:
        transformers_logging.set_verbosity(previous[0])
        transformers_logging.disable_propagation()
        hub_logging.set_verbosity(previous[1])
        hub_logging.disable_propagation()
    captured = capfd.readouterr()
    assert "resolve" in caplog.text  # debug logging was on: the client logged its requests
    for text in (
        caplog.text,
        captured.out,
        captured.err,
        str(card),
        ModelCard.load(hub_repo_id, token=hub_token).content,
    ):
        assert hub_token not in text
    _assert_token_only_in_authorization(hub_server.requests[seen:], hub_token)


def _assert_token_only_in_authorization(requests, token: str) -> None:
    authorized = 0
    for record in requests:
        assert token not in record.path and token not in record.query, record.path
        for name, value in record.headers.items():
            if token in value:
                assert name.lower() == "authorization" and value == f"Bearer {token}", name
                authorized += 1
    assert authorized > 0


def _scan_for(token: str, *roots: Path) -> list[str]:
    found = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and token.encode() in path.read_bytes():
                found.append(str(path))
    return found


def test_training_script_pushes_model_processor_card_and_checkpoints(
    hub_server, hub_faults, hub_api, hub_repo_id, hub_token, hub_cache, tmp_path, images
):
    """`train_vqvae.py --push_to_hub`: the repo loads by id, has the card, and a branch has the checkpoints.

    The first checkpoint push hits a server error: training goes on and the next push brings it up.
    """
    out = tmp_path / "run"
    hub_faults.inject_fault(
        method="POST", path_contains=f"{hub_repo_id}/commit/checkpoints", kind="500", times=1
    )
    seen = len(hub_server.requests)
    command = [
        sys.executable, str(REPO / "training" / "train_vqvae.py"), "--config", str(REPO / "training/configs/tiny.yaml"),
        "--output_dir", str(out), "--max_steps", "4", "--eval_every", "0", "--checkpoint_every", "2",
        "--max_eval_samples", "64", "--report_to", "tensorboard",  # tensorboard: its logs are checked for the token too
        "--push_to_hub", "--hub_model_id", hub_repo_id, "--hub_token", hub_token,
        "--push_checkpoints_to_branch", "checkpoints",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert f"Pushed to {hub_repo_id}" in result.stdout
    assert "could not push checkpoint-00000002" in result.stderr

    # main: what `from_pretrained` needs, the card and the pictures; no checkpoints, logs or samples.
    files = set(hub_api.list_repo_files(hub_repo_id))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "metrics.json",
            "reconstructions.png", "codebook_usage.png", "modeling_vqvae.py"} <= files  # fmt: skip
    assert not [f for f in files if f.startswith(("checkpoints/", "logs/", "samples/", ".tmp"))]

    model = AutoModel.from_pretrained(hub_repo_id).eval()
    remote_processor = AutoImageProcessor.from_pretrained(hub_repo_id)
    local_model, local_processor = (
        VQVAEModel.from_pretrained(out).eval(),
        VQVAEImageProcessor.from_pretrained(out),
    )
    assert type(model) is VQVAEModel and type(remote_processor) is VQVAEImageProcessor
    assert remote_processor.to_dict() == local_processor.to_dict()
    pixel_values = remote_processor(images, return_tensors="pt").pixel_values
    _assert_same(_outputs(model, pixel_values), _outputs(local_model, pixel_values))

    card = ModelCard.load(hub_repo_id)
    metrics = json.loads((out / "metrics.json").read_text())
    data = card.data
    assert data.library_name == "vq_tokenizer" and data.license == "apache-2.0"
    assert data.pipeline_tag is None and {"vq-vae", "vq-tokenization"} <= set(data.tags)
    assert data.datasets == ["zalando-datasets/fashion_mnist"]
    assert "model-index" in data.to_dict()
    figures = {result.metric_type: result.metric_value for result in data.eval_results}
    assert figures["psnr"] == round(metrics["psnr"], 2) and figures["ssim"] == round(metrics["ssim"], 4)
    assert figures["codebook_usage"] == round(metrics["codebook_usage"], 4)
    assert f'from_pretrained("{hub_repo_id}")' in card.text

    # The branch has both checkpoint folders, each as saved locally; main has none.
    branch_files = set(hub_api.list_repo_files(hub_repo_id, revision="checkpoints"))
    for step in ("checkpoint-00000002", "checkpoint-00000004"):
        local = {f"{step}/{p.name}" for p in (out / "checkpoints" / step).iterdir()}
        assert local and local <= branch_files, step
    assert {ref.name for ref in hub_api.list_repo_refs(hub_repo_id).branches} == {"main", "checkpoints"}
    assert not [f for f in files if f.startswith("checkpoint-")]

    # The token: nowhere in the run's files, the pushed files, the output, or the server log bar Authorization.
    assert (out / "logs").is_dir() and any((out / "logs").rglob("*tfevents*"))
    pushed_main = Path(snapshot_download(hub_repo_id))
    pushed_branch = Path(snapshot_download(hub_repo_id, revision="checkpoints"))
    assert _scan_for(hub_token, out, pushed_main, pushed_branch) == []
    assert hub_token not in result.stdout and hub_token not in result.stderr
    assert "--hub_token <redacted>" in card.text
    _assert_token_only_in_authorization(hub_server.requests[seen:], hub_token)
