"""The output folder of an encoding: parquet shards under `data/`, a dataset card, and a manifest that makes a run
resumable and refuses to mix encodings.

    <output>/
      README.md                        dataset card: YAML (configs, features, splits, tokenizer) + text
      data/train-00000-of-00006.parquet ...
      token_mapping.json               with a mapping (`input_ids`)
      vq_tokenizer_encoding.json       manifest: the encoding's identity, each split's source and state
      .parts/train/00003.parquet       while a split runs: finished parts, `end.json`, progress per process

A part holds the rows `[c * shard_size, (c + 1) * shard_size)` of the source, whatever the number of processes;
it is written under a temporary name and renamed, so a part on disk is always whole. Its parquet footer records
its rows, tokens and skipped items. When every part is there, the main process renames them to their final
`data/` names (an idempotent step, safe to redo after a kill), writes the card, then marks the split complete.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEFAULT_SHARD_SIZE", "MANIFEST_NAME", "OutputFolder", "Part", "SplitPlan"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "vq_tokenizer_encoding.json"
MANIFEST_FORMAT = 2  # 1: the save_to_disk folders of earlier versions
DATA_DIR = "data"
PARTS_DIR = ".parts"
END_NAME = "end.json"
PART_METADATA_KEY = b"vq_tokenizer"
# Rows per part (and per shard): a kill loses at most this many rows' work per process.
DEFAULT_SHARD_SIZE = 10_000
# Skipped items listed in the card (the manifest lists them all).
CARD_SKIPPED_LIMIT = 100


@dataclass(frozen=True)
class Part:
    """One finished part: source rows `[start, stop)`, of which `rows` were written (the others skipped)."""

    index: int
    start: int
    stop: int
    rows: int
    tokens: int
    skipped: list[list] = field(default_factory=list)  # [row index, reason]


@dataclass
class SplitPlan:
    """What the main process found in the output folder, sent to every process before any work starts."""

    error: str | None = None
    complete: bool = False
    num_rows: int | None = None  # known for a map-style source, or once a stream has been read to its end
    shard_size: int = 0
    done: dict[int, tuple[int, int]] = field(default_factory=dict)  # part -> (start, stop)

    @property
    def num_parts(self) -> int | None:
        return None if self.num_rows is None else math.ceil(self.num_rows / self.shard_size)

    @property
    def done_rows(self) -> int:
        return sum(stop - start for start, stop in self.done.values())


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


class OutputFolder:
    """One split of an encoding in `root` (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike, split: str):
        if not split or "/" in split or split.startswith("."):
            raise ValueError(f"split {split!r} is not usable as a file name prefix; name it e.g. 'train'.")
        self.root = Path(root)
        self.split = split
        self.data = self.root / DATA_DIR
        self.parts = self.root / PARTS_DIR / split
        self.manifest_path = self.root / MANIFEST_NAME

    # -- manifest -----------------------------------------------------------------------------------------
    def read_manifest(self) -> dict | None:
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise ValueError(
                f"{self.manifest_path} is unreadable ({error}); pass --overwrite to start again."
            ) from error

    def write_manifest(self, manifest: dict) -> None:
        _write_atomically(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def split_entry(self) -> dict | None:
        manifest = self.read_manifest() or {}
        return manifest.get("splits", {}).get(self.split)

    # -- preparing a run (main process only) ------------------------------------------------------------------
    def prepare(
        self, encoding: dict, source: dict, shard_size: int | None, num_rows: int | None, overwrite: bool
    ) -> SplitPlan:
        """Check the folder against this encoding, clear what `overwrite` replaces, and list the finished parts.

        `encoding` identifies the tokenizer, mapping and precision (a folder holds one encoding); `source` the
        input split. Refused without `overwrite`: a folder of another encoding, a split of another source, or
        files that no encoding run wrote. With `overwrite`, those are replaced, and so is a complete split of
        this very encoding; an unfinished run of this encoding is resumed, never restarted, so the command
        that was killed finishes the job when run again.
        """
        try:
            manifest = self.read_manifest()
        except ValueError:
            if not overwrite:
                raise
            manifest = {"format": "unreadable"}
        if manifest is not None and manifest.get("format") != MANIFEST_FORMAT:
            if not overwrite:
                raise ValueError(
                    f"{self.root} holds an encoding written by an older vq-tokenizer (a save_to_disk folder); "
                    "pass --overwrite to replace it, or choose another output folder."
                )
            self._clear_everything(old_format=True)
            manifest = None
        if manifest is None:
            if self._has_foreign_files() and not overwrite:
                raise ValueError(
                    f"{self.root} already holds files that are not an encoding of this tool (README.md or "
                    f"{DATA_DIR}/); pass --overwrite to replace them, or choose another output folder."
                )
            self._clear_everything()
            manifest = {"format": MANIFEST_FORMAT, "encoding": encoding, "splits": {}}
        elif manifest.get("encoding", {}).get("fingerprint") != encoding["fingerprint"]:
            if not overwrite:
                raise ValueError(
                    f"{self.root} holds codes of another encoding ({_describe_encoding(manifest.get('encoding'))}; "
                    f"this run: {_describe_encoding(encoding)}); pass --overwrite to replace them, or choose "
                    "another output folder."
                )
            self._clear_everything()
            manifest = {"format": MANIFEST_FORMAT, "encoding": encoding, "splits": {}}

        entry = manifest["splits"].get(self.split)
        if entry is not None and entry.get("source", {}).get("id") != source["id"]:
            if not overwrite:
                raise ValueError(
                    f"{self.root} holds split {self.split!r} of another dataset ({entry['source'].get('description')}; "
                    f"this run: {source['description']}); pass --overwrite to replace it, or choose another "
                    "output folder."
                )
            entry = None
        elif entry is not None and entry.get("state") == "complete":
            if not overwrite:
                return SplitPlan(
                    complete=True, num_rows=entry["num_source_rows"], shard_size=entry["shard_size"]
                )
            entry = None
        if entry is not None and shard_size is not None and entry["shard_size"] != shard_size:
            raise ValueError(
                f"{self.root}: split {self.split!r} was started with shard_size={entry['shard_size']}; pass the "
                "same (or leave it unset), or --overwrite to start again."
            )
        if entry is None:
            self._clear_split()
            entry = {"source": source, "shard_size": shard_size or DEFAULT_SHARD_SIZE, "state": "running"}
            manifest["splits"][self.split] = entry
            self.write_manifest(manifest)

        self.parts.mkdir(parents=True, exist_ok=True)
        for leftover in self.parts.iterdir():  # half-written parts and the progress of earlier runs
            if leftover.name.startswith((".", "progress-", "failed-")):
                leftover.unlink(missing_ok=True)
        if num_rows is not None:
            self.write_end(num_rows)
        plan = SplitPlan(num_rows=self.read_end(), shard_size=entry["shard_size"])
        plan.done = {part.index: (part.start, part.stop) for part in self.finished_parts(plan)}
        return plan

    def _has_foreign_files(self) -> bool:
        return (self.root / "README.md").exists() or (self.data.is_dir() and any(self.data.iterdir()))

    def _clear_everything(self, old_format: bool = False) -> None:
        """Remove what an encoding writes here (never other files)."""
        shutil.rmtree(self.data, ignore_errors=True)
        shutil.rmtree(self.root / PARTS_DIR, ignore_errors=True)
        names = ["README.md", MANIFEST_NAME, "token_mapping.json"]
        if old_format:
            names += ["dataset_info.json", "state.json"] + [path.name for path in self.root.glob("*.arrow")]
        for name in names:
            (self.root / name).unlink(missing_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)

    def _clear_split(self) -> None:
        shutil.rmtree(self.parts, ignore_errors=True)
        for path in self.data.glob(f"{self.split}-*.parquet"):
            path.unlink()

    # -- parts ----------------------------------------------------------------------------------------------
    def part_path(self, index: int) -> Path:
        return self.parts / f"{index:05d}.parquet"

    def write_part(self, table, part: Part) -> None:
        """Write a part's table under a temporary name, flush it to disk, then rename it into place."""
        import pyarrow.parquet as pq

        metadata = dict(table.schema.metadata or {})
        metadata[PART_METADATA_KEY] = json.dumps(part.__dict__).encode()
        table = table.replace_schema_metadata(metadata)
        path = self.part_path(part.index)
        partial = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(partial, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)

    def finished_parts(self, plan: SplitPlan) -> list[Part]:
        """The parts on disk whose footer is whole and matches the plan; any other part file is removed.

        A part counts under its own name or, once the split is being finalized, under its final `data/` name.
        """
        indices = {int(path.stem) for path in self.parts.glob("[0-9]*.parquet")}
        if plan.num_parts is not None:
            indices |= {i for i in range(plan.num_parts) if self._final_path(i, plan.num_parts).exists()}
        parts = []
        for index in sorted(indices):
            path = self._existing_part_path(index, plan.num_parts)
            part = _read_part(path)
            start = index * plan.shard_size
            expected_stop = None if plan.num_rows is None else min(plan.num_rows, start + plan.shard_size)
            if (
                part is None
                or part.index != index
                or part.start != start
                or (expected_stop is not None and part.stop != expected_stop)
            ):
                logger.warning("Removing %s (not a whole part of this plan); it will be encoded again.", path)
                path.unlink(missing_ok=True)
                continue
            parts.append(part)
        return parts

    def _final_path(self, index: int, count: int) -> Path:
        return self.data / shard_name(self.split, index, count)

    def _existing_part_path(self, index: int, count: int | None) -> Path:
        path = self.part_path(index)
        if not path.exists() and count is not None and self._final_path(index, count).exists():
            return self._final_path(index, count)
        return path

    def write_end(self, num_rows: int) -> None:
        """Record the source's row count (a stream's is known once a process has read it to the end)."""
        _write_atomically(self.parts / END_NAME, json.dumps({"num_rows": num_rows}))

    def read_end(self) -> int | None:
        try:
            return json.loads((self.parts / END_NAME).read_text())["num_rows"]
        except (OSError, ValueError, KeyError):
            return None

    # -- progress (each process writes its own count; the main process adds them up) --------------------------
    def write_progress(self, rank: int, rows: int) -> None:
        """Best effort: progress only feeds the main process's bar. Once every part is on disk the main process
        may finish the split and remove its parts folder while another process still reports its last count."""
        try:
            _write_atomically(self.parts / f"progress-{rank:05d}.json", json.dumps({"rows": rows}))
        except FileNotFoundError:
            pass

    def read_progress(self) -> int:
        total = 0
        for path in self.parts.glob("progress-*.json"):
            try:
                total += json.loads(path.read_text())["rows"]
            except (OSError, ValueError, KeyError):
                pass  # being replaced right now; the next read has it
        return total

    # -- failures (a process that fails says so, and the others stop waiting for it) ---------------------------
    def write_failure(self, rank: int, reason: str) -> None:
        if self.parts.is_dir():
            _write_atomically(self.parts / f"failed-{rank:05d}.json", json.dumps({"reason": reason}))

    def read_failures(self) -> list[tuple[int, str]]:
        failures = []
        for path in sorted(self.parts.glob("failed-*.json")):
            try:
                failures.append((int(path.stem.split("-")[1]), json.loads(path.read_text())["reason"]))
            except (OSError, ValueError, KeyError):
                pass
        return failures

    # -- the end of a split (main process) ---------------------------------------------------------------------
    def all_parts_done(self) -> bool:
        num_rows = self.read_end()
        if num_rows is None:
            return False
        count = math.ceil(num_rows / self.split_entry()["shard_size"])
        return all(self._existing_part_path(index, count).exists() for index in range(count))

    def finalize(self, card_writer) -> dict:
        """Rename the parts to `data/<split>-XXXXX-of-NNNNN.parquet`, write the card, mark the split complete.

        Every step can be redone after a kill: a part already renamed is found under its final name.
        `card_writer(manifest)` writes README.md from the manifest. Returns the split's manifest entry.
        """
        manifest = self.read_manifest()
        entry = manifest["splits"][self.split]
        num_rows = self.read_end()
        count = max(1, math.ceil(num_rows / entry["shard_size"]))
        names = [shard_name(self.split, index, count) for index in range(count)]
        self.data.mkdir(parents=True, exist_ok=True)
        parts = []
        for index, name in enumerate(names):
            source, target = self.part_path(index), self.data / name
            if source.exists():
                os.replace(source, target)
            part = _read_part(target)
            if part is None:
                raise RuntimeError(f"{target} is missing or not whole; run the same command again.")
            parts.append(part)
        for stale in self.data.glob(f"{self.split}-*.parquet"):
            if stale.name not in names:
                stale.unlink()
        skipped = [item for part in parts for item in part.skipped]
        entry.update(
            state="complete",
            num_source_rows=num_rows,
            num_rows=sum(part.rows for part in parts),
            num_tokens=sum(part.tokens for part in parts),
            shards=[f"{DATA_DIR}/{name}" for name in names],
            skipped=skipped,
        )
        card_writer(manifest)
        self.write_manifest(manifest)
        shutil.rmtree(self.parts, ignore_errors=True)
        try:
            (self.root / PARTS_DIR).rmdir()
        except OSError:
            pass  # another split is still running
        return entry


def _read_part(path: Path) -> Part | None:
    """A part's record from its parquet footer, or None when the file is not a whole part."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path)
        record = json.loads(metadata.metadata[PART_METADATA_KEY])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        part = Part(**record)
    except TypeError:
        return None
    return part if metadata.num_rows == part.rows else None


def _describe_encoding(encoding: dict | None) -> str:
    if not encoding:
        return "unknown"
    tokenizer = encoding.get("tokenizer") or "an unnamed tokenizer"
    revision = encoding.get("revision")
    details = [f"tokenizer {tokenizer}" + (f"@{revision}" if revision else "")]
    details.append(f"weights {encoding.get('tokenizer_fingerprint', '?')[:12]}")
    if encoding.get("token_mapping"):
        details.append(f"mapping {json.dumps(encoding['token_mapping'], sort_keys=True)}")
    if encoding.get("dtype") not in (None, "fp32"):
        details.append(encoding["dtype"])
    return ", ".join(details)
