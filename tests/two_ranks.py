"""Two real gloo processes running a child script, for the tests that compare the ranks' final state."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import torch


def run_two_ranks(tmp_path: Path, child_source: str) -> tuple[dict, dict]:
    """Run `child_source` as ranks 0 and 1 (argv: rank, world size, port, output file); return what each saved."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = tmp_path / "child.py"
    script.write_text(child_source)
    children = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), "2", str(port), str(tmp_path / f"rank{rank}.pt")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    for child in children:
        output, _ = child.communicate(timeout=240)
        assert child.returncode == 0, output.decode()[-3000:]
    first, second = (torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2))
    return first, second
