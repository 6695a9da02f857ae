"""Shared pytest setup.

The Hub
-------
Tests talk to a local Hub-compatible server (`tests/hub_server.py`) through the real
`huggingface_hub` client, never huggingface.co. The client reads its settings (HF_ENDPOINT, HF_HOME,
HF_HUB_DISABLE_XET, ...) once, when it is first imported, so they are set below at import time of this
file, which pytest loads before any test module (and so before anything imports huggingface_hub or
transformers). The server itself only starts when a test asks for `hub_server` (or a fixture built on it).

    def test_push(hub_api, hub_repo_id, hub_cache):
        hub_api.create_repo(hub_repo_id)
        model.push_to_hub(hub_repo_id, token=hub_api.token)
        VQVAEModel.from_pretrained(hub_repo_id)   # downloads into the per-test `hub_cache`

Fixtures: `hub_server` (the running `HubServer`, session-wide: use a fresh `hub_repo_id` per test),
`hub_token`/`hub_user` (a valid token and its user), `hub_other_token` (a second user's token),
`hub_api` (`HfApi` logged in with `hub_token`), `hub_repo_id` (an unused repo id under `hub_user`),
`hub_cache` (a fresh, empty download cache for this test), `hub_faults` (the server, with any fault a
test injected cleared at teardown).
"""

import atexit
import os
import re
import shutil
import socket
import tempfile
import uuid

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HUB_PORT = _free_port()  # chosen now because HF_ENDPOINT must name it before the server exists
HUB_ENDPOINT = f"http://127.0.0.1:{HUB_PORT}"
HUB_USER = "test-user"
HUB_TOKEN = "hf_test_token"
HUB_OTHER_USER = "other-user"
HUB_OTHER_TOKEN = "hf_other_user_token"

_HF_HOME = tempfile.mkdtemp(prefix="vq-tokenizer-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)

os.environ.update(
    {
        "HF_ENDPOINT": HUB_ENDPOINT,
        "HF_HOME": _HF_HOME,  # caches, token file and trust_remote_code modules, all private to this run
        "HF_HUB_DISABLE_XET": "1",  # hf_xet is installed: without this, uploads and downloads take the Xet path
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",  # seconds for the metadata HEAD; the server is local
    }
)
# Anything that would point the client at a real account, another cache, or offline mode.
for _name in (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_STORED_TOKENS_PATH",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_CACHE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    """The local Hub, started once per test session on HUB_PORT (what HF_ENDPOINT points at)."""
    from hub_server import HubServer
    from huggingface_hub import constants

    if constants.ENDPOINT != HUB_ENDPOINT:
        raise RuntimeError(
            f"huggingface_hub was imported before tests/conftest.py set HF_ENDPOINT (it uses "
            f"{constants.ENDPOINT}); do not import it from a pytest plugin or at collection time."
        )
    server = HubServer(
        tmp_path_factory.mktemp("hub-server"),
        tokens={HUB_TOKEN: HUB_USER, HUB_OTHER_TOKEN: HUB_OTHER_USER},
        port=HUB_PORT,
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def hub_token() -> str:
    return HUB_TOKEN


@pytest.fixture(scope="session")
def hub_user() -> str:
    return HUB_USER


@pytest.fixture(scope="session")
def hub_other_token() -> str:
    """Token of a second user, who may read public repos only."""
    return HUB_OTHER_TOKEN


@pytest.fixture(scope="session")
def hub_api(hub_server, hub_token):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_server.url, token=hub_token)


@pytest.fixture
def hub_repo_id(request, hub_user) -> str:
    """A repo id nobody has used yet (the server lives for the whole session); not created."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-.")[:60]
    return f"{hub_user}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A fresh download cache, used by default by huggingface_hub/transformers and by subprocesses."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def hub_faults(hub_server):
    """The server, for tests that call `inject_fault`; faults still pending are cleared at teardown."""
    yield hub_server
    hub_server.clear_faults()


# ----------------------------------------------------------------------------------------------------
# Other shared fixtures go below this line.
# ----------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------
# Real Fashion-MNIST data and a tiny tokenizer trained on it (tests of tokenised data); module-scoped.


@pytest.fixture(scope="module")
def one_thread():
    """For modules whose tensors are all tiny (`pytestmark = pytest.mark.usefixtures("one_thread")`): a second
    torch thread only adds waiting, a lot of it on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fashion_subset():
    """256 real Fashion-MNIST training images."""
    import fashion

    return fashion.fashion_subset_of(256)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory, fashion_subset):
    """A tiny tokenizer trained for 20 steps on `fashion_subset`, saved with its processor (a folder)."""
    import fashion

    return fashion.train_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"), fashion_subset)
