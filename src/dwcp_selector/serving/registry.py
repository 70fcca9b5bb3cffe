"""The model registry: immutable versions named by their content, aliases that move, and every move logged.

    REGISTRY/
      versions/<id>/     a registered model directory, never changed (files made read-only); ``id`` is
                         the first 16 hex digits of the sha256 over every file's name and sha256
      aliases.json       alias -> version id (``champion``, ``challenger``, ``previous``, any other name)
      history.jsonl      one line per move: when, alias, from, to, why, who
      .lock              serialises writers (``fcntl.flock``): two operators never interleave a move

A version is verified twice on the way in (the model loads: manifest checksum, ONNX sha256s, signature
when a key is configured) and on every :meth:`ModelRegistry.path` (its files must still hash to its
id), so a version changed on disk after registration is refused, never served.

Promotion moves ``champion`` and keeps the one it replaces as ``previous``; rollback moves ``champion``
back to ``previous`` (and ``previous`` to what came before it, from the history). Moves are atomic: the
new ``aliases.json`` is written aside, fsynced and renamed over the old one, and the history line is
appended and fsynced first, so a reader sees either the old aliases or the new ones.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, ConfigError
from ..modeling.artifact import MANIFEST, load_artifact

__all__ = ["ALIASES", "ModelRegistry", "Move", "VersionInfo", "content_id"]

#: The aliases a rollout uses; any other name matching ``_ALIAS_RE`` may be used too.
ALIASES = ("champion", "challenger", "previous")
_ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_ID_LEN = 16


def content_id(model_dir: str | Path) -> str:
    """The version id of a model directory: sha256 over every regular file's relative name and sha256."""
    root = Path(model_dir)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise ArtifactError(f"{root} holds no files")
    for p in files:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        h.update(f"{p.relative_to(root).as_posix()}\0{digest}\n".encode())
    return h.hexdigest()[:_ID_LEN]


@dataclass(frozen=True, slots=True)
class Move:
    """One line of the history: an alias moved from one version (or nothing) to another."""

    at: str
    alias: str
    from_id: str | None
    to_id: str | None
    why: str
    who: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "alias": self.alias,
            "from": self.from_id,
            "to": self.to_id,
            "why": self.why,
            "who": self.who,
        }


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """A registered version: its id, when it came, the aliases on it and what its manifest says."""

    id: str
    registered_at: str
    aliases: tuple[str, ...]
    family: str
    kind: str
    metrics: dict[str, Any]


class ModelRegistry:
    """A directory of immutable model versions and the aliases that point at them."""

    def __init__(self, root: str | Path, *, create: bool = False, model_key: bytes | None = None) -> None:
        self.root = Path(root)
        self.model_key = model_key
        if create:
            try:
                (self.root / "versions").mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the model registry {self.root}: {exc}") from exc
        elif not (self.root / "versions").is_dir():
            raise ConfigError(f"{self.root} is not a model registry (no versions/ directory)")

    # -- reading -----------------------------------------------------------------------------------
    def aliases(self) -> dict[str, str]:
        path = self.root / "aliases.json"
        if not path.exists():
            return {}
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"cannot read {path}: {exc}") from exc
        if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
            raise ArtifactError(f"{path} is not a map of alias to version id")
        return {str(k): v for k, v in doc.items()}

    def history(self) -> list[Move]:
        path = self.root / "history.jsonl"
        if not path.exists():
            return []
        moves = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                moves.append(Move(d["at"], d["alias"], d["from"], d["to"], d["why"], d["who"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ArtifactError(f"{path} line {n} is not a history entry: {exc}") from exc
        return moves

    def versions(self) -> list[VersionInfo]:
        by_version: dict[str, list[str]] = {}
        for alias, vid in self.aliases().items():
            by_version.setdefault(vid, []).append(alias)
        out: list[tuple[int, VersionInfo]] = []
        for d in sorted((self.root / "versions").iterdir()):
            if not d.is_dir() or d.name.startswith("."):
                continue
            try:
                manifest = json.loads((d / MANIFEST).read_text())
            except (OSError, ValueError):
                manifest = {}
            mtime_ns = d.stat().st_mtime_ns
            registered = dt.datetime.fromtimestamp(mtime_ns / 1e9, dt.UTC).isoformat(timespec="seconds")
            out.append(
                (
                    mtime_ns,
                    VersionInfo(
                        d.name,
                        registered,
                        tuple(sorted(by_version.get(d.name, []))),
                        str(manifest.get("family", "?")),
                        str(manifest.get("kind", "?")),
                        dict(manifest.get("metrics") or {}),
                    ),
                )
            )
        # in registration order (to the nanosecond: two versions registered within a second keep theirs)
        return [v for _, v in sorted(out, key=lambda t: t[0])]

    def resolve(self, ref: str) -> str:
        """The version id an alias, an id or a unique id prefix (at least 6 digits) names."""
        aliases = self.aliases()
        if ref in aliases:
            return aliases[ref]
        if re.fullmatch(r"[0-9a-f]{6,16}", ref):
            found = [d.name for d in (self.root / "versions").iterdir() if d.name.startswith(ref)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise ConfigError(f"version prefix {ref!r} is ambiguous: {sorted(found)}")
        known = sorted(aliases)
        raise ConfigError(f"no model version or alias {ref!r} in {self.root} (aliases: {known or 'none'})")

    def path(self, ref: str) -> Path:
        """The directory of the version ``ref`` names, after checking its files still hash to its id."""
        vid = self.resolve(ref)
        d = self.root / "versions" / vid
        if not d.is_dir():
            raise ArtifactError(f"alias or id {ref!r} points at version {vid}, which is not in {self.root}")
        actual = content_id(d)
        if actual != vid:
            raise ArtifactError(
                f"model version {vid} was modified after registration (its files hash to {actual})"
            )
        return d

    # -- writing -----------------------------------------------------------------------------------
    def register(self, model_dir: str | Path, *, alias: str | None = None, why: str = "") -> str:
        """Copy a model directory in as an immutable version (verified by loading it); its id. The same
        content registered again is the same version."""
        src = Path(model_dir)
        load_artifact(src, key=self.model_key)  # refuses a tampered, mismatched or unsigned model
        vid = content_id(src)
        with self._locked():
            dest = self.root / "versions" / vid
            if not dest.exists():
                tmp = self.root / "versions" / f".incoming-{vid}-{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(src, tmp)
                if content_id(tmp) != vid:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise ArtifactError(f"{src} changed while it was being registered")
                for p in tmp.rglob("*"):
                    if p.is_file():
                        p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                os.utime(tmp)  # copytree kept the source's times: the version's own is its registration
                os.replace(tmp, dest)
                _fsync_dir(dest.parent)
            if alias is not None:
                self._move(alias, vid, why or f"registered {src.name}")
        return vid

    def promote(self, ref: str, *, alias: str = "champion", why: str) -> str:
        """Point ``alias`` at ``ref``; promoting to ``champion`` keeps the replaced one as ``previous``."""
        with self._locked():
            vid = self.path(ref).name
            old = self.aliases().get(alias)
            if old == vid:
                raise ConfigError(f"{alias} is already version {vid}")
            if alias == "champion" and old is not None:
                self._move("previous", old, f"replaced as champion by {vid}: {why}")
            self._move(alias, vid, why)
            if alias == "champion" and self.aliases().get("challenger") == vid:
                self._move("challenger", None, f"promoted to champion: {why}")
        return vid

    def rollback(self, *, alias: str = "champion", why: str) -> str:
        """Move ``alias`` back to ``previous``; ``previous`` goes to the version before that one."""
        with self._locked():
            aliases = self.aliases()
            back = aliases.get("previous")
            if back is None:
                raise ConfigError("nothing to roll back to: no previous version")
            current = aliases.get(alias)
            self.path(back)  # the version rolled back to must still be intact
            before = next(
                (
                    m.from_id
                    for m in reversed(self.history())
                    if m.alias == alias and m.to_id == back and m.from_id != current
                ),
                None,
            )
            self._move(alias, back, f"rollback from {current}: {why}")
            self._move("previous", before, f"rollback of {alias} to {back}: {why}")
        return back

    def _move(self, alias: str, vid: str | None, why: str) -> None:
        """Move one alias (``None``: remove it), history first (locked)."""
        if not _ALIAS_RE.match(alias):
            raise ConfigError(f"alias {alias!r}: lower-case letters, digits, - and _, at most 32")
        aliases = self.aliases()
        old = aliases.get(alias)
        if old == vid:
            return
        move = Move(dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), alias, old, vid, why, _who())
        with (self.root / "history.jsonl").open("a") as f:
            f.write(json.dumps(move.to_dict(), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if vid is None:
            aliases.pop(alias, None)
        else:
            aliases[alias] = vid
        tmp = self.root / f".aliases-{os.getpid()}.json"
        with tmp.open("w") as f:
            f.write(json.dumps(aliases, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / "aliases.json")
        _fsync_dir(self.root)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.root / ".lock").open("a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _who() -> str:
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return "unknown"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
