"""Real files as payloads: ``--corpus DIR`` lets operators train on their own kind of data.

A corpus session takes one file of the directory (the whole file, or a block of it when the planned size
is smaller) and ships successive versions of it made by the edit model (``edit_version``: in-place
replacements, insertions and deletions, line-aware for text), each against the previous one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError

__all__ = ["Corpus"]

_MIN_FILE = 64


class Corpus:
    """The regular files under a directory (symlinks and unreadable files are skipped)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ConfigError(f"corpus {self.directory} is not a directory")
        files: list[tuple[str, int]] = []
        for root, _, names in os.walk(self.directory):
            for name in sorted(names):
                path = Path(root, name)
                try:
                    if path.is_symlink() or not path.is_file():
                        continue
                    size = path.stat().st_size
                except OSError:
                    continue
                if size >= _MIN_FILE and os.access(path, os.R_OK):
                    files.append((str(path), size))
        if not files:
            raise ConfigError(f"corpus {self.directory} holds no readable file of {_MIN_FILE} bytes or more")
        files.sort()
        self.files = files
        self.total_bytes = sum(s for _, s in files)

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, rng: np.random.Generator, size: int) -> tuple[str, bytes]:
        """A file (weighted by size, so large files are not drowned by many small ones) and ``size``
        bytes of it: the whole file when it is no larger, else a block at a random offset."""
        sizes = np.array([s for _, s in self.files], dtype=float)
        weights = np.sqrt(sizes)
        path, fsize = self.files[int(rng.choice(len(self.files), p=weights / weights.sum()))]
        with open(path, "rb") as f:
            if fsize <= size:
                return path, f.read()
            f.seek(int(rng.integers(0, fsize - size + 1)))
            return path, f.read(size)
