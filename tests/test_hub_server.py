"""The local Hub server (tests/hub_server.py) driven by the real huggingface_hub client."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

WEIGHTS = bytes(range(256)) * 64  # 16 KiB of binary: *.safetensors goes through LFS
CONFIG = json.dumps({"model_type": "vqvae", "codebook_size": 512}).encode()


@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(WEIGHTS)
    (folder / "config.json").write_bytes(CONFIG)
    return folder


@pytest.fixture
def pushed_repo(hub_api, hub_repo_id, model_folder):
    """A repo holding model.safetensors (LFS) and config.json (regular), pushed in one commit."""
    hub_api.create_repo(hub_repo_id)
    hub_api.upload_folder(repo_id=hub_repo_id, folder_path=model_folder, commit_message="Add model")
    return hub_repo_id


def _cache_files(cache):
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


def test_whoami_and_create_repo(hub_api, hub_repo_id, hub_user):
    assert hub_api.whoami()["name"] == hub_user

    url = hub_api.create_repo(hub_repo_id)
    assert url.repo_id == hub_repo_id
    with pytest.raises(HfHubHTTPError) as conflict:
        hub_api.create_repo(hub_repo_id)
    assert conflict.value.response.status_code == 409
    assert hub_api.create_repo(hub_repo_id, exist_ok=True).repo_id == hub_repo_id

    info = hub_api.model_info(hub_repo_id)
    assert len(info.sha) == 40 and info.private is False
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]  # the Hub's initial commit

    name_only = hub_repo_id.split("/")[1] + "-bare"
    assert hub_api.create_repo(name_only).repo_id == f"{hub_user}/{name_only}"  # the user's namespace


def test_upload_folder_stores_lfs_and_regular_files(hub_server, hub_api, hub_token, pushed_repo, hub_cache):
    tree = {entry.path: entry for entry in hub_api.list_repo_tree(pushed_repo, recursive=True)}
    assert sorted(tree) == [".gitattributes", "config.json", "model.safetensors"]
    assert tree["model.safetensors"].lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert tree["model.safetensors"].size == len(WEIGHTS)
    assert tree["config.json"].lfs is None
    assert hub_api.list_repo_files(pushed_repo) == sorted(tree)
    siblings = {s.rfilename: s for s in hub_api.model_info(pushed_repo, files_metadata=True).siblings}
    assert siblings["model.safetensors"].lfs.size == len(WEIGHTS)

    weights = hf_hub_download(pushed_repo, "model.safetensors")
    config = hf_hub_download(pushed_repo, "config.json")
    assert open(weights, "rb").read() == WEIGHTS
    assert open(config, "rb").read() == CONFIG
    snapshot = snapshot_download(pushed_repo)
    assert open(os.path.join(snapshot, "model.safetensors"), "rb").read() == WEIGHTS

    # One commit; the LFS bytes went through the batch API to a signed URL that never sees the token.
    repo_requests = [r for r in hub_server.requests if pushed_repo in r.path]
    assert len([r for r in repo_requests if "/commit/" in r.path]) == 1
    assert any(r.path.endswith(".git/info/lfs/objects/batch") for r in repo_requests)
    lfs_puts = [r for r in hub_server.requests if r.path.startswith("/lfs-upload/")]
    assert lfs_puts and all(r.header("Authorization") is None for r in lfs_puts)
    assert not any(hub_token in r.path or hub_token in r.query for r in hub_server.requests)


def test_old_revision_by_commit_sha(hub_api, pushed_repo, hub_cache):
    first = hub_api.model_info(pushed_repo).sha
    new_config = json.dumps({"model_type": "vqvae", "codebook_size": 1024}).encode()
    second = hub_api.upload_file(
        path_or_fileobj=new_config, path_in_repo="config.json", repo_id=pushed_repo
    ).oid
    assert second != first

    assert open(hf_hub_download(pushed_repo, "config.json", revision=first), "rb").read() == CONFIG
    assert open(hf_hub_download(pushed_repo, "config.json"), "rb").read() == new_config
    old_snapshot = snapshot_download(pushed_repo, revision=first)
    assert open(os.path.join(old_snapshot, "config.json"), "rb").read() == CONFIG

    commits = [c.commit_id for c in hub_api.list_repo_commits(pushed_repo)]
    assert commits[:2] == [second, first] and len(commits) == 3
    # Same bytes again: the preupload oid tells the client nothing changed, so no new commit.
    again = hub_api.upload_file(path_or_fileobj=new_config, path_in_repo="config.json", repo_id=pushed_repo)
    assert again.oid == second


def test_branch_for_checkpoints(hub_api, pushed_repo, hub_cache):
    main_sha = hub_api.model_info(pushed_repo).sha
    hub_api.create_branch(pushed_repo, branch="checkpoints")
    hub_api.create_branch(pushed_repo, branch="checkpoints", exist_ok=True)
    hub_api.upload_file(
        path_or_fileobj=b"step 100", path_in_repo="ckpt/step.txt", repo_id=pushed_repo, revision="checkpoints"
    )
    assert hub_api.model_info(pushed_repo).sha == main_sha
    assert (
        open(hf_hub_download(pushed_repo, "ckpt/step.txt", revision="checkpoints"), "rb").read()
        == b"step 100"
    )
    branches = {b.name: b.target_commit for b in hub_api.list_repo_refs(pushed_repo).branches}
    assert branches["main"] == main_sha and branches["checkpoints"] != main_sha


def test_missing_repo_file_and_revision_raise_client_errors(hub_api, pushed_repo, hub_cache):
    missing_repo = pushed_repo + "-missing"
    with pytest.raises(RepositoryNotFoundError):
        hub_api.model_info(missing_repo)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(missing_repo, "config.json")
    with pytest.raises(RemoteEntryNotFoundError) as missing_file:
        hf_hub_download(pushed_repo, "nope.json")
    assert isinstance(missing_file.value, EntryNotFoundError)
    with pytest.raises(RemoteEntryNotFoundError):
        list(hub_api.list_repo_tree(pushed_repo, path_in_repo="no_such_folder"))
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(pushed_repo, "config.json", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hub_api.model_info(pushed_repo, revision="0" * 40)


def test_private_repo_needs_the_owner_token(
    hub_server, hub_api, hub_repo_id, hub_token, hub_other_token, hub_cache
):
    hub_api.create_repo(hub_repo_id, private=True)
    hub_api.upload_file(path_or_fileobj=CONFIG, path_in_repo="config.json", repo_id=hub_repo_id)
    assert hub_api.model_info(hub_repo_id).private is True

    anonymous = HfApi(endpoint=hub_server.url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info(hub_repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(hub_repo_id, "config.json", token=False)
    with pytest.raises(RepositoryNotFoundError):  # another user's valid token sees nothing either
        hf_hub_download(hub_repo_id, "config.json", token=hub_other_token)
    with pytest.raises(HfHubHTTPError) as wrong_token:
        hf_hub_download(hub_repo_id, "config.json", token="hf_wrong")
    assert wrong_token.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=hub_repo_id)

    assert open(hf_hub_download(hub_repo_id, "config.json", token=hub_token), "rb").read() == CONFIG


def test_writing_needs_a_token_with_rights(hub_server, hub_api, pushed_repo, hub_other_token):
    other = HfApi(endpoint=hub_server.url, token=hub_other_token)
    assert other.model_info(pushed_repo).sha  # public: readable by anyone
    with pytest.raises(HfHubHTTPError) as forbidden:
        other.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=pushed_repo)
    assert forbidden.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as anonymous:
        HfApi(endpoint=hub_server.url, token=False).upload_file(
            path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=pushed_repo
        )
    assert anonymous.value.response.status_code == 401


def test_offline_mode_reads_the_cache(hub_server, pushed_repo, hub_cache):
    online = hf_hub_download(pushed_repo, "config.json")
    snapshot_download(pushed_repo)
    requests_before = len(hub_server.requests)

    script = textwrap.dedent(
        f"""
        import json
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
        out = {{"config": hf_hub_download({pushed_repo!r}, "config.json"), "snapshot": snapshot_download({pushed_repo!r})}}
        try:
            hf_hub_download({pushed_repo!r}, "never-downloaded.json")
        except LocalEntryNotFoundError as error:
            out["missing"] = type(error).__name__
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # HF_HUB_CACHE points at hub_cache (set by the fixture)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["config"] == online and open(out["config"], "rb").read() == CONFIG
    assert open(os.path.join(out["snapshot"], "model.safetensors"), "rb").read() == WEIGHTS
    assert out.get("missing") == "LocalEntryNotFoundError", result.stdout
    assert len(hub_server.requests) == requests_before  # offline really meant no request


@pytest.mark.parametrize("chunk_size", [1024, None], ids=["resumed-with-range", "restarted"])
def test_truncated_download_is_retried(hub_faults, pushed_repo, hub_cache, monkeypatch, chunk_size):
    # The client writes what it received only per DOWNLOAD_CHUNK_SIZE (10 MiB): with small chunks the cut
    # download resumes with a Range request; with the default, a cut small file is fetched again whole.
    if chunk_size is not None:
        monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", chunk_size)
    fault = hub_faults.inject_fault(method="GET", path_contains="model.safetensors", kind="truncate")
    path = hf_hub_download(pushed_repo, "model.safetensors")

    assert open(path, "rb").read() == WEIGHTS
    assert fault.hits == 1
    url_end = f"{pushed_repo}/resolve/main/model.safetensors"
    gets = [r for r in hub_faults.requests if r.method == "GET" and r.path.endswith(url_end)]
    resumed_range = f"bytes={len(WEIGHTS) // 2}-" if chunk_size else None
    assert [r.header("Range") for r in gets] == [None, resumed_range]
    assert not [f for f in _cache_files(hub_cache) if f.endswith(".incomplete")]


def test_failed_download_leaves_no_partial_file_in_cache(hub_faults, pushed_repo, hub_cache):
    hub_faults.inject_fault(method="GET", path_contains="model.safetensors", kind="truncate")
    hub_faults.inject_fault(method="GET", path_contains="model.safetensors", kind="500")  # the resume fails
    with pytest.raises(HfHubHTTPError):
        hf_hub_download(pushed_repo, "model.safetensors")

    assert try_to_load_from_cache(pushed_repo, "model.safetensors", cache_dir=hub_cache) is None
    assert not [f for f in _cache_files(hub_cache) if "/blobs/" in f or f.endswith(".incomplete")]
    assert open(hf_hub_download(pushed_repo, "model.safetensors"), "rb").read() == WEIGHTS


def test_failed_commit_leaves_the_repo_at_its_previous_commit(hub_faults, hub_api, pushed_repo):
    before = hub_api.model_info(pushed_repo).sha
    hub_faults.inject_fault(method="POST", path_contains="/commit/", kind="500")
    with pytest.raises(HfHubHTTPError) as failure:
        hub_api.upload_file(
            path_or_fileobj=WEIGHTS[::-1], path_in_repo="model.safetensors", repo_id=pushed_repo
        )
    assert failure.value.response.status_code == 500
    assert hub_api.model_info(pushed_repo).sha == before

    after = hub_api.upload_file(
        path_or_fileobj=WEIGHTS[::-1], path_in_repo="model.safetensors", repo_id=pushed_repo
    )
    assert [c.commit_id for c in hub_api.list_repo_commits(pushed_repo)][:2] == [after.oid, before]
