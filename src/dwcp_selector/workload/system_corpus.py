"""Real files every node of this kind has: the staging workload's default real data.

Generated families are a start; the labels must also come from bytes nobody in this project made. A
:class:`SystemCorpus` finds them on the machine itself (nothing is downloaded, nothing written outside
the process), in six sources, each with its payload type:

========== ================================================================ =============== ==============
source     files                                                            payload type    next versions
========== ================================================================ =============== ==============
binaries   ELF executables and shared libraries (``/usr/bin``, ``/usr/lib``) ``executable``  edit model
docs       ``/usr/share/doc`` and man pages, gzip members decompressed       ``document``    edit model
packages   the dpkg status database and the file lists of installed packages ``package_db``  ``status-old``,
                                                                                              else edits
archives   compressed files as shipped (``.gz``, ``.xz``, ``.bz2``, wheels) ``archive``     edit model
python     the standard library's sources of this interpreter               ``source``      the same file
                                                                                              in the other
                                                                                              installed
                                                                                              Pythons
sqlite     a SQLite database of the installed packages' real records        ``database``    real SQL:
                                                                                              UPDATE, DELETE,
                                                                                              INSERT
========== ================================================================ =============== ==============

Where a source has real successors (a module across Python releases, dpkg's previous status, a
database after real SQL), the session's versions are those. Otherwise they come from the edit model
(``edit_version``). A source that is absent on a machine is skipped; the corpus refuses only a machine
with none at all. File lists are bounded (``MAX_FILES`` per source) and sorted, so two nodes with the
same files sample the same bytes for the same seed.
"""

from __future__ import annotations

import gzip
import os
import sqlite3
import stat
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import ConfigError

__all__ = ["SOURCES", "SOURCE_TYPES", "SystemCorpus"]

SOURCE_TYPES: dict[str, str] = {
    "binaries": "executable",
    "docs": "document",
    "packages": "package_db",
    "archives": "archive",
    "python": "source",
    "sqlite": "database",
}
SOURCES: tuple[str, ...] = tuple(SOURCE_TYPES)
MAX_FILES = 4000
#: Names looked at per source at most: discovery stays well under a second on a full system.
MAX_VISITS = 40_000
_MIN_FILE = 256
_MAX_READ = 64 << 20
_ELF = b"\x7fELF"
_ARCHIVE_SUFFIXES = (".gz", ".xz", ".bz2", ".zst", ".whl", ".zip", ".jar")
_PRUNE = frozenset({"site-packages", "__pycache__", "dist-packages"})
_NOT_TEXT = (".png", ".jpg", ".gif", ".svg", ".woff", ".woff2", ".ttf", ".ico")


def _walk(
    roots: list[Path],
    keep: Callable[[Path], bool],
    *,
    name_ok: Callable[[str], bool] = lambda _n: True,
    limit: int = MAX_FILES,
) -> list[tuple[str, int]]:
    """Regular, readable files under ``roots`` (sorted walk) that pass the cheap ``name_ok`` and then
    ``keep``; at most ``limit`` of them, after looking at no more than ``MAX_VISITS`` names."""
    found: list[tuple[str, int]] = []
    visits = 0
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, names in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _PRUNE)
            for name in sorted(names):
                visits += 1
                if visits > MAX_VISITS:
                    return found
                if not name_ok(name):
                    continue
                path = Path(dirpath, name)
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode) or st.st_size < _MIN_FILE:
                    continue
                if os.access(path, os.R_OK) and keep(path):
                    found.append((str(path), st.st_size))
                    if len(found) >= limit:
                        return found
    return found


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == _ELF
    except OSError:
        return False


def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _other_stdlibs() -> list[Path]:
    """Standard libraries of the other Pythons installed beside this one (pyenv and the like), by version."""
    here = _stdlib()
    root = Path(sys.base_prefix).parent
    out: list[tuple[tuple[int, ...], Path]] = []
    if root.is_dir():
        for prefix in root.iterdir():
            for lib in (prefix / "lib").glob("python3.*"):
                try:
                    key = tuple(int(x) for x in lib.name[len("python") :].split("."))
                except ValueError:
                    continue
                if (lib / "os.py").exists() and lib.resolve() != here.resolve():
                    out.append((key, lib))
    return [p for _, p in sorted(out)]


def _status_records() -> list[dict[str, str]]:
    """The stanzas of the dpkg status database: the installed packages' real records."""
    try:
        text = Path("/var/lib/dpkg/status").read_text(errors="replace")
    except OSError:
        return []
    records = []
    for stanza in text.split("\n\n"):
        rec: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key is not None:
                rec[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                rec[key] = value.strip()
        if rec.get("Package"):
            records.append(rec)
    return records


class SystemCorpus:
    """The real files of this machine, by source (see the module docstring)."""

    def __init__(self, sources: tuple[str, ...] = SOURCES, *, exclude: tuple[str, ...] = ()) -> None:
        unknown = set(sources) | set(exclude)
        unknown -= set(SOURCES)
        if unknown:
            raise ConfigError(f"unknown system-corpus sources {sorted(unknown)}; expected some of {SOURCES}")
        self.files: dict[str, list[tuple[str, int]]] = {}
        self._records: list[dict[str, str]] = []
        wanted = [s for s in sources if s not in exclude]
        for s in wanted:
            found = self._discover(s)
            if found:
                self.files[s] = found
        if not self.files:
            raise ConfigError(f"none of the system-corpus sources {wanted} has files on this machine")

    @property
    def sources(self) -> list[str]:
        return list(self.files)

    def _discover(self, source: str) -> list[tuple[str, int]]:
        if source == "binaries":
            return _walk(
                [Path("/usr/bin"), Path("/usr/sbin"), Path("/usr/lib/x86_64-linux-gnu")],
                _is_elf,
                name_ok=lambda n: "." not in n or ".so" in n,
            )
        if source == "docs":
            roots = [Path("/usr/share/doc"), Path("/usr/share/man/man1"), Path("/usr/share/man/man3")]
            return _walk(roots, lambda p: True, name_ok=lambda n: not n.endswith(_NOT_TEXT))
        if source == "packages":
            files = [(p, Path(p).stat().st_size) for p in ("/var/lib/dpkg/status",) if Path(p).is_file()]
            lists = _walk(
                [Path("/var/lib/dpkg/info")],
                lambda p: True,
                name_ok=lambda n: n.endswith((".list", ".md5sums")),
            )
            return files + lists
        if source == "archives":
            roots = [Path("/usr/share/doc"), Path("/usr/share"), Path(sys.prefix) / "lib"]
            found = _walk(roots, lambda p: True, name_ok=lambda n: n.endswith(_ARCHIVE_SUFFIXES))
            return sorted(set(found))
        if source == "python":
            return _walk(
                [_stdlib()],
                lambda p: True,
                name_ok=lambda n: n.endswith(".py"),
            )
        if source == "sqlite":
            self._records = _status_records()
            return [("sqlite:dpkg-status", 1)] if len(self._records) >= 50 else []
        raise ConfigError(f"unknown system-corpus source {source}")  # pragma: no cover

    # -- a session's versions --------------------------------------------------------------------------
    def versions(self, source: str, rng: np.random.Generator, size: int) -> Iterator[tuple[str, bytes, bool]]:
        """(origin, bytes, real) for version 0, 1, …: ``real`` is False where the caller must make the
        next version with its edit model (the source has no real successor left)."""
        if source == "sqlite":
            yield from self._sqlite_versions(rng, size)
            return
        files = self.files[source]
        sizes = np.array([s for _, s in files], dtype=float)
        weights = np.sqrt(sizes)
        path, fsize = files[int(rng.choice(len(files), p=weights / weights.sum()))]
        offset = 0
        if source != "docs" and fsize > size:
            offset = int(rng.integers(0, fsize - size + 1)) & ~4095
        first = self._read(path, offset, size)
        yield path, first, True
        if source == "python":
            rel = Path(path).relative_to(_stdlib())
            for lib in _other_stdlibs():
                nxt = lib / rel
                if nxt.is_file():
                    data = self._read(str(nxt), 0, size)
                    if data:
                        yield str(nxt), data, True
        elif source == "packages" and path == "/var/lib/dpkg/status":
            old = Path("/var/lib/dpkg/status-old")
            if old.is_file():
                yield str(old), self._read(str(old), 0, size), True
        while True:
            yield path, b"", False

    @staticmethod
    def _read(path: str, offset: int, size: int) -> bytes:
        size = min(size, _MAX_READ)
        try:
            if path.endswith(".gz") and ("/share/doc/" in path or "/share/man/" in path):
                with gzip.open(path, "rb") as g:  # docs as people read them
                    return g.read(size)
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(size)
        except (OSError, EOFError, gzip.BadGzipFile):
            return b""

    def _sqlite_versions(self, rng: np.random.Generator, size: int) -> Iterator[tuple[str, bytes, bool]]:
        """A SQLite database of real package records, then the same after batches of real SQL."""
        recs = self._records
        order = rng.permutation(len(recs))
        # records held out of the first version are the rows later INSERTs add
        held = max(1, len(recs) // 10)
        db = sqlite3.connect(":memory:")
        try:
            db.execute(
                "CREATE TABLE package (name TEXT PRIMARY KEY, version TEXT, arch TEXT, section TEXT, "
                "installed_size INTEGER, maintainer TEXT, depends TEXT, description TEXT)"
            )

            def row(r: dict[str, str]) -> tuple[object, ...]:
                return (
                    r.get("Package"),
                    r.get("Version"),
                    r.get("Architecture"),
                    r.get("Section"),
                    int(r["Installed-Size"]) if r.get("Installed-Size", "").isdigit() else None,
                    r.get("Maintainer"),
                    r.get("Depends"),
                    r.get("Description"),
                )

            db.executemany(
                "INSERT OR IGNORE INTO package VALUES (?,?,?,?,?,?,?,?)",
                [row(recs[i]) for i in order[held:]],
            )
            db.commit()
            pending = [recs[i] for i in order[:held]]
            yield "sqlite:dpkg-status", db.serialize(), True
            while True:
                names = [r[0] for r in db.execute("SELECT name FROM package ORDER BY name")]
                n = len(names)
                if n == 0:
                    break
                touched = rng.choice(n, size=max(1, n * 3 // 100), replace=False)
                for i in touched.tolist():
                    donor = recs[int(rng.integers(0, len(recs)))]
                    db.execute(
                        "UPDATE package SET version = ?, installed_size = ? WHERE name = ?",
                        (donor.get("Version"), int(rng.integers(1, 1 << 16)), names[i]),
                    )
                for i in rng.choice(n, size=max(1, n // 100), replace=False).tolist():
                    db.execute("DELETE FROM package WHERE name = ?", (names[i],))
                for r in pending[: max(1, n * 2 // 100)]:
                    db.execute("INSERT OR IGNORE INTO package VALUES (?,?,?,?,?,?,?,?)", row(r))
                pending = pending[max(1, n * 2 // 100) :]
                db.commit()
                yield "sqlite:dpkg-status", db.serialize(), True
        finally:
            db.close()
