"""The transformers range the package declares is the one it is tested with; older versions get a clear
message at import."""

import os
import subprocess
import sys
import warnings

import pytest
import transformers

from vq_tokenizer._compat import MIN_TRANSFORMERS, NEXT_MAJOR, check_transformers_version


def test_the_installed_transformers_is_in_the_tested_range():
    check_transformers_version()
    check_transformers_version(transformers.__version__)


@pytest.mark.parametrize("old", ["5.15.0", "5.23.9", "4.57.1", "5.0"])
def test_an_older_transformers_is_refused_with_the_range_to_install(old):
    with pytest.raises(ImportError, match=rf"transformers>={MIN_TRANSFORMERS},<{NEXT_MAJOR}.*{old}"):
        check_transformers_version(old)


def test_a_newer_major_warns():
    with pytest.warns(UserWarning, match="tested with transformers"):
        check_transformers_version("6.1.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_transformers_version(MIN_TRANSFORMERS)
        check_transformers_version("5.99.0.dev0")


def test_import_vq_tokenizer_with_an_old_transformers_says_what_to_install(tmp_path):
    """Package metadata of transformers 5.15.0 placed first on the path: what `pip show` and the check see."""
    dist_info = tmp_path / "transformers-5.15.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 5.15.0\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    completed = subprocess.run(
        [sys.executable, "-c", "import vq_tokenizer"], env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode != 0
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: vq_tokenizer needs transformers>="), completed.stderr[-2000:]
    assert "5.15.0 is installed" in last_line
