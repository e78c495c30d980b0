"""The generated data set the backups read, the day's small change, and the archive check.

Half the bytes (and files) are incompressible random data, half log-like text (lz4 makes it
about 2.3x smaller); file sizes are log-normal (many small files, a few large ones), spread over
a few directories. Seeded: the same options give the same data.
"""

from __future__ import annotations

import json
import os
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import MB, BenchError
from devstack.borg import run_borg

CHANGED_FILES = 5  # text files a day's work appends to
ADDED_FILES = 10  # new files a day's work adds
ADDED_FILE_BYTES = 50_000
GROWTH_BYTES = 20_000
DAY_CHANGE = (
    f"{CHANGED_FILES} text files grown by {GROWTH_BYTES // 1000} kB, "
    f"{ADDED_FILES} new files of {ADDED_FILE_BYTES // 1000} kB"
)


@dataclass(frozen=True)
class Totals:
    files: int
    bytes: int

    def __str__(self) -> str:
        return f"{self.bytes / MB:.1f} MB in {self.files} files"


@dataclass
class DataSet:
    path: Path
    seed: int
    random_bytes: int
    text_bytes: int
    changes: int = 0  # days of work applied so far

    def totals(self) -> Totals:
        """Regular files and their bytes as they are now on disk."""
        files = 0
        size = 0
        for folder, _dirs, names in os.walk(self.path):
            for name in names:
                files += 1
                size += (Path(folder) / name).stat().st_size
        return Totals(files, size)

    def describe(self) -> str:
        return (
            f"{self.totals()} ({self.random_bytes / MB:.1f} MB random, "
            f"{self.text_bytes / MB:.1f} MB text)"
        )

    def change(self) -> None:
        """A day's work (``DAY_CHANGE``): a few text files grow, a few new files appear."""
        self.changes += 1
        rng = random.Random(self.seed * 1000 + self.changes)  # noqa: S311 - test data
        texts = sorted(self.path.glob("text/*/*.txt"))
        grown = rng.sample(texts, min(CHANGED_FILES, len(texts)))
        vocabulary = make_vocabulary(rng)
        for index, path in enumerate(grown):
            with path.open("ab") as file:
                file.write(text_content(rng, vocabulary, index, GROWTH_BYTES))
        new = self.path / "text" / f"day-{self.changes:03d}"
        new.mkdir()
        for index in range(ADDED_FILES):
            content = text_content(rng, vocabulary, index, ADDED_FILE_BYTES)
            (new / f"note-{index:02d}.txt").write_bytes(content)


def file_sizes(rng: random.Random, count: int, total: int) -> list[int]:
    """``count`` sizes summing to ``total``: log-normal, so a few big files and many small."""
    if count <= 0:
        return []
    weights = [rng.lognormvariate(0.0, 1.5) for _ in range(count)]
    scale = total / sum(weights)
    sizes = [int(weight * scale) for weight in weights]
    sizes[sizes.index(max(sizes))] += total - sum(sizes)
    return sizes


def make_vocabulary(rng: random.Random) -> list[str]:
    return ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(400)]


def text_content(
    rng: random.Random, vocabulary: Sequence[str], file_index: int, size: int
) -> bytes:
    """Log-like lines of words from a small vocabulary (lz4 makes it about 2.3x smaller)."""
    pieces: list[bytes] = []
    length = 0
    line = 0
    while length < size:
        words = rng.choices(vocabulary, k=max(size // 5, 16))
        for index in range(0, len(words), 10):
            words[index] = f"\n{file_index:05d}.{line:07d} INFO {words[index]}:"
            line += 1
        piece = " ".join(words).encode()
        pieces.append(piece)
        length += len(piece)
    return b"".join(pieces)[:size]


def generate_data(folder: Path, size_bytes: int, files: int, seed: int) -> DataSet:
    """Half the bytes (and files) random, half text, spread over a few directories."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    vocabulary = make_vocabulary(rng)
    random_files = files // 2
    text_files = files - random_files
    random_bytes = size_bytes // 2 if random_files else 0
    text_bytes = size_bytes - random_bytes
    plan = [("random", "bin", size) for size in file_sizes(rng, random_files, random_bytes)]
    plan += [("text", "txt", size) for size in file_sizes(rng, text_files, text_bytes)]
    for index, (kind, suffix, size) in enumerate(plan):
        directory = folder / kind / f"d{index % max(1, files // 50):03d}"
        directory.mkdir(parents=True, exist_ok=True)
        content = (
            rng.randbytes(size) if kind == "random" else text_content(rng, vocabulary, index, size)
        )
        (directory / f"file-{index:05d}.{suffix}").write_bytes(content)
    return DataSet(folder, seed, random_bytes, text_bytes)


def archived_totals(
    repository: Path, archive: str, data: Path, passphrase: str, base_dir: Path
) -> Totals:
    """Regular files under ``data`` in one archive, and their bytes (other files left out:
    borgmatic stores its configuration in every archive too)."""
    listing = run_borg(
        ["list", "--json-lines", "--", f"{repository}::{archive}"], passphrase, base_dir
    )
    prefix = str(data).lstrip("/") + "/"
    files = 0
    size = 0
    for line in listing.stdout.splitlines():
        item = json.loads(line)
        if item.get("type") == "-" and str(item.get("path", "")).startswith(prefix):
            files += 1
            size += int(item.get("size", 0))
    return Totals(files, size)


def check_archive(
    label: str, repository: Path, archive: str, data: DataSet, passphrase: str, base_dir: Path
) -> None:
    """The archive holds every file of the data set as it is now, with all its bytes."""
    expected = data.totals()
    found = archived_totals(repository, archive, data.path, passphrase, base_dir)
    if found != expected:
        raise BenchError(f"{label}: archive {archive} holds {found}; expected {expected}")
