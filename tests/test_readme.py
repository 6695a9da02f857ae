"""The README's Python snippets run as written."""

from __future__ import annotations

import re
from pathlib import Path

from vq_tokenizer import CodeTokenMapping

README = Path(__file__).resolve().parents[1] / "README.md"


def test_use_it_snippet_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## Use it", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md#use-it", "exec"), namespace)
    assert tuple(namespace["codes"].shape) == (4, 7, 7)
    assert tuple(namespace["reconstruction"].shape) == (4, 1, 28, 28)
    assert len(namespace["pictures"]) == 4 and (tmp_path / "my-tokenizer" / "model.safetensors").is_file()
    assert type(namespace["same"]).__name__ == "VQVAEModel"


def test_tokens_snippet_runs(tmp_path, monkeypatch):
    readme = README.read_text()
    section = readme.split("## Use the tokens in your own transformer", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert CodeTokenMapping.from_pretrained(tmp_path / "my-tokenizer").offset == 10
