"""The real-data benchmark corpus: files and version pairs that nobody in this project made.

Every item is obtained on the machine that runs the benchmark, and skipped, with the reason printed, when it
cannot be (no network, no pyenv, a file this system does not have); nothing is ever made up in its place.

* **Installed files**: ELF executables and shared libraries of the system and of this environment's Python
  packages, and text files (C headers, the CA bundle, X11 compose tables, Perl's Unicode names).
* **Released package versions** fetched from the package index with ``pip download --no-deps`` at the exact
  versions pinned below (their sha256 checked): two consecutive releases of pure-Python sdists, each
  ``.tar.gz`` unpacked to its uncompressed ``.tar`` (a tarball of a source tree across releases), and one
  shared library from two releases of a wheel (``libarrow.so`` of pyarrow, ``libllvmlite.so`` of llvmlite,
  the latter above 64 MiB). About 250 MB are downloaded once.
* **CPython standard libraries** of the two newest minor versions installed under ``pyenv root``, as
  reproducible tarballs (sorted names, zero mtimes and owners, mode 0644, without ``__pycache__``, tests,
  ``site-packages`` and compiled modules): the whole library (it includes ``config-*/libpython*.a``),
  ``json/``, ``asyncio/``, ``encodings/``, ``ensurepip/`` and the C headers, and ``typing.py`` on its own.
* **Databases**: the Debian package-status database and the previous version dpkg keeps
  (``/var/lib/dpkg/status-old``) when they differ; two SQLite databases built from real records (the
  package records of that status database, about 90 KiB; the files and md5 sums every installed package
  lists, about 14 MiB) and their next versions made by real SQL through the sqlite3 module: about 3 % of the
  rows UPDATEd, 1 % DELETEd and 2 % INSERTed (the inserted rows are real records held out of the first
  version; the updated values are derived, see each item's provenance); and a text-database variant,
  marked derived: the status file with 2 % of its lines edited in place, same length.
* **Debian changelogs**: every ``/usr/share/doc/*/changelog.Debian.gz`` of the installed packages,
  decompressed and concatenated in path order, as one real text file.

The corpus is cached in ``~/.cache/dwcp-selector/bench-corpus`` (``--corpus-dir`` or the
``DWCP_BENCH_CORPUS`` environment variable override it), so reruns download and build nothing; the
``manifest.json`` there records every item's provenance (package, version, archive and its sha256, the
path inside it, the SQL applied) and the sha256 of every file. An installed file is copied into the cache
when first built: the corpus stays the same while the system changes, until ``--refresh``.

    python bench/corpus.py [--corpus-dir DIR] [--only SUBSTRING] [--offline] [--refresh]

builds what is missing and lists the corpus; ``bench/strategies.py`` builds and measures it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_VAR = "DWCP_BENCH_CORPUS"
DEFAULT_DIR = Path("~/.cache/dwcp-selector/bench-corpus")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
MiB = 1 << 20

# Wheels are fetched for one fixed tag set, whatever interpreter runs this script, so that every machine
# measures the same bytes.
WHEEL_TAGS = [
    "--only-binary=:all:",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux2014_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
]

#: The archives downloaded, by (package, version): their sha256 as published on the index.
PINNED_SHA256: dict[tuple[str, str], str] = {
    ("click", "8.3.2"): "14162b8b3b3550a7d479eafa77dfd3c38d9dc8951f6f69c78913a8f9a7540fd5",
    ("click", "8.3.3"): "398329ad4837b2ff7cbe1dd166a4c0f8900c3ca3a218de04466f38f6497f18a2",
    ("django", "5.2.18"): "461c5dd06d2ea16bd5ca37d3f46e4def1d6b0fe7588c6f4e2119517bb0af8b2d",
    ("django", "5.2.19"): "ad03d8abc51dbff95ebf34b27123cf0c26a3b62db7ba0cd520783686362533d1",
    ("pyarrow", "26.0.0"): "6e89dee53aaeb50505ed6152ea55bc7ddfd4f4df264f5427ea255288d8f0e580",
    ("pyarrow", "26.0.1"): "39cb0f2418282c24bea6ceda77b03e5a8f0a5766b63a8bf194d4e2a2c423548c",
    ("llvmlite", "0.49.0"): "a8c0fc9d624bdc30a3d2db11eb2fb98f80fb209d20b37604eda516cd9b699cf4",
    ("llvmlite", "0.50.0"): "a6ffde00d4be8772a24e3e8b3af6bf86a79e7cf066d944ef56136b3957d707dc",
}

#: Directories left out of the standard-library tarballs (and compiled modules, ``*.so``).
STDLIB_EXCLUDE = frozenset({"__pycache__", "site-packages", "test", "tests", "idlelib", "lib2to3"})

SEED = 10  # the rows the SQL changes and the lines the text variant edits


class Unavailable(Exception):
    """An item that cannot be obtained here; the message says why."""


@dataclass(frozen=True)
class Item:
    """One corpus entry: a single file, or a version pair (``old_path`` → ``path``)."""

    id: str
    name: str
    family: str
    source: str
    provenance: dict[str, Any]
    path: Path
    old_path: Path | None
    size: int
    old_size: int | None
    derived: bool = False

    @property
    def is_pair(self) -> bool:
        return self.old_path is not None

    def read(self) -> bytes:
        return self.path.read_bytes()

    def read_old(self) -> bytes | None:
        return None if self.old_path is None else self.old_path.read_bytes()

    def summary(self) -> dict[str, Any]:
        """What a results file keeps of the item: no local paths."""
        return {
            "id": self.id,
            "name": self.name,
            "family": self.family,
            "kind": "pair" if self.is_pair else "file",
            "bytes": self.size,
            "old_bytes": self.old_size,
            "derived": self.derived,
            "source": self.source,
            "provenance": self.provenance,
        }


@dataclass
class Built:
    """What a builder returns: the new (or only) contents, the old ones of a pair, and their origin."""

    name: str
    source: str
    provenance: dict[str, Any]
    new: bytes
    old: bytes | None = None
    derived: bool = False


@dataclass
class Context:
    dir: Path
    offline: bool
    log: Callable[[str], None]
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def downloads(self) -> Path:
        return self.dir / "downloads"


@dataclass(frozen=True)
class Spec:
    id: str
    family: str
    build: Callable[[Context], Built]


@dataclass
class Corpus:
    dir: Path
    items: list[Item]
    skipped: list[dict[str, str]]
    build_s: float


# ----------------------------------------------------------------------------------------------- helpers


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def default_dir() -> Path:
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser()


def _shown(path: Path) -> str:
    """A path as provenance shows it: relative to site-packages, ``$(pyenv root)`` or ``~``, never this
    machine's own directories."""
    text = str(path)
    for prefix, shown in (
        (_site_packages(), "site-packages"),
        (_pyenv_root_or_none(), "$(pyenv root)"),
        (str(Path.home()), "~"),
    ):
        if prefix and (text == prefix or text.startswith(prefix.rstrip("/") + "/")):
            return shown + text[len(prefix.rstrip("/")) :]
    return text


def _site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


_PYENV_ROOT: list[str | None] = []


def _pyenv_root_or_none() -> str | None:
    if not _PYENV_ROOT:
        root: str | None = None
        if shutil.which("pyenv"):
            try:
                out = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30)
                root = out.stdout.strip() or None if out.returncode == 0 else None
            except (OSError, subprocess.TimeoutExpired):
                root = None
        root = root or os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
        _PYENV_ROOT.append(root if root and Path(root, "versions").is_dir() else None)
    return _PYENV_ROOT[0]


def _dpkg_owner(path: Path) -> dict[str, str] | None:
    """The Debian package (and its version) that installed ``path``, if dpkg knows it."""
    if shutil.which("dpkg-query") is None:
        return None
    real = str(path.resolve())
    tries = [str(path), real] + [p.removeprefix("/usr") for p in (str(path), real) if p.startswith("/usr/")]
    for candidate in dict.fromkeys(tries):
        out = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            owners, _, owned = line.rpartition(": ")
            if owned == candidate and "diversion" not in owners:
                package = owners.split(",")[0].strip()
                version = subprocess.run(
                    ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
                ).stdout.strip()
                return {"debian_package": package, "debian_version": version}
    return None


def _python_owner(path: Path) -> dict[str, str] | None:
    """The installed Python distribution (and its version) whose RECORD lists ``path``."""
    real = path.resolve()
    for dist in importlib.metadata.distributions():
        for f in dist.files or ():
            if f.name == path.name and Path(str(dist.locate_file(f))).resolve() == real:
                return {"python_distribution": dist.metadata["Name"], "python_version": dist.version}
    return None


def _read_installed(path: Path) -> tuple[bytes, dict[str, Any]]:
    if not path.is_file():
        raise Unavailable(f"{path} is not on this system")
    prov: dict[str, Any] = {"origin": "installed file", "path": _shown(path)}
    if path.resolve() != path:
        prov["resolved_path"] = _shown(path.resolve())
    owner = _dpkg_owner(path) or _python_owner(path)
    if owner:
        prov.update(owner)
    return path.read_bytes(), prov


def _owner_text(prov: dict[str, Any]) -> str:
    if "debian_package" in prov:
        return f" (Debian {prov['debian_package']} {prov['debian_version']})"
    if "python_distribution" in prov:
        return f" ({prov['python_distribution']} {prov['python_version']})"
    return ""


def reproducible_tar(root: Path, *, exclude: frozenset[str] = STDLIB_EXCLUDE, prefix: str = "") -> bytes:
    """A tarball of the regular files under ``root``: sorted names, zero mtimes, owners and ids, mode 0644,
    the directories in ``exclude`` and compiled modules (``*.so``) left out."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if any(part in exclude for part in rel.parts) or not path.is_file() or path.suffix == ".so":
                continue
            info = tarfile.TarInfo(prefix + str(rel))
            info.size = path.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


# --------------------------------------------------------------------------------------- installed files


def _lib_dir() -> str:
    return "/usr/lib/" + (sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu")


def _first(patterns: list[str]) -> Path:
    import glob

    for pattern in patterns:
        for hit in sorted(glob.glob(pattern)):
            if Path(hit).is_file():
                return Path(hit)
    raise Unavailable("none of " + ", ".join(patterns) + " is on this system")


def _installed(name: str, patterns: Callable[[], list[str]], what: str) -> Callable[[Context], Built]:
    def build(ctx: Context) -> Built:
        path = _first(patterns())
        data, prov = _read_installed(path)
        return Built(
            name.format(file=path.name), f"installed {what} {_shown(path)}{_owner_text(prov)}", prov, data
        )

    return build


def _package_file(module: str, pattern: str) -> Callable[[], list[str]]:
    """Files of an installed Python package matching ``pattern`` (a glob relative to the package)."""

    def patterns() -> list[str]:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise Unavailable(f"the Python package {module} is not installed")
        return [str(Path(loc, pattern)) for loc in spec.submodule_search_locations]

    return patterns


def _installed_specs() -> list[Spec]:
    lib = _lib_dir()

    def at(*patterns: str) -> Callable[[], list[str]]:
        return lambda: [p.replace("{lib}", lib) for p in patterns]

    # (id, name, where); "{file}" in a name is the file found
    elf = [
        ("libbz2.so", "libbz2.so.1.0", at("{lib}/libbz2.so.1.0")),
        ("grep", "grep", at("/usr/bin/grep")),
        ("tar", "tar", at("/usr/bin/tar")),
        ("bash", "bash", at("/usr/bin/bash")),
        ("libc.so", "libc.so.6", at("{lib}/libc.so.6")),
        ("libcrypto.so", "libcrypto.so.3", at("{lib}/libcrypto.so.3")),
        ("libpython.so", "{file}", at("{lib}/libpython3.*.so.1.0")),
        (
            "numpy-multiarray.so",
            "numpy _multiarray_umath.so",
            _package_file("numpy", "_core/_multiarray_umath*.so"),
        ),
        ("libicudata.so", "{file}", at("{lib}/libicudata.so.[0-9]*.[0-9]*")),
        ("libonnxruntime.so", "{file}", _package_file("onnxruntime", "capi/libonnxruntime.so.*")),
    ]
    text = [
        ("videodev2.h", "videodev2.h", at("/usr/include/linux/videodev2.h")),
        ("ca-certificates.crt", "ca-certificates.crt", at("/etc/ssl/certs/ca-certificates.crt")),
        ("x11-compose", "X11 en_US.UTF-8 Compose", at("/usr/share/X11/locale/en_US.UTF-8/Compose")),
        ("sqlite3.h", "sqlite3.h", at("/usr/include/sqlite3.h")),
        ("perl-name.pl", "Perl unicore/Name.pl", at("/usr/share/perl/*/unicore/Name.pl")),
    ]
    specs = [Spec("installed-" + i, "ELF", _installed(n, p, "ELF file")) for i, n, p in elf]
    specs += [Spec("installed-" + i, "text", _installed(n, p, "text file")) for i, n, p in text]
    return specs


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


# ----------------------------------------------------------------------------- released package versions


def _pip_download(ctx: Context, package: str, version: str, *, wheel: bool) -> Path:
    """The archive of ``package==version`` in the downloads directory, fetched with pip if missing."""
    ctx.downloads.mkdir(parents=True, exist_ok=True)
    suffix = ".whl" if wheel else ".tar.gz"

    def existing() -> Path | None:
        stem = f"{package}-{version}".lower().replace("_", "-")
        for p in sorted(ctx.downloads.iterdir()):
            name = p.name.lower().replace("_", "-")
            if name.startswith(stem + ("-" if wheel else ".")) and name.endswith(suffix):
                return p
        return None

    path = existing()
    if path is None:
        if ctx.offline:
            raise Unavailable(f"{package} {version} is not downloaded yet and --offline was given")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        cmd += ["--no-input", "--retries", "1", "--timeout", "60", "-d", str(ctx.downloads)]
        cmd += WHEEL_TAGS if wheel else [f"--no-binary={package}"]
        cmd.append(f"{package}=={version}")
        ctx.log(f"  pip download --no-deps {package}=={version} ({'wheel' if wheel else 'sdist'})")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        path = existing()
        if proc.returncode != 0 or path is None:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:]
            raise Unavailable(f"pip download {package}=={version} failed: {'; '.join(errors)[:300]}")
    pinned = PINNED_SHA256.get((package, version))
    digest = sha256(path.read_bytes())
    if pinned and digest != pinned:
        ctx.log(f"  warning: {path.name} has sha256 {digest}, the pinned one is {pinned}")
    return path


def _archive_prov(path: Path, package: str, version: str) -> dict[str, Any]:
    return {
        "package": package,
        "version": version,
        "archive": path.name,
        "archive_sha256": sha256(path.read_bytes()),
        "archive_bytes": path.stat().st_size,
    }


def _sdist_pair(package: str, old: str, new: str) -> Callable[[Context], Built]:
    def build(ctx: Context) -> Built:
        tars, provs = [], []
        for version in (old, new):
            path = _pip_download(ctx, package, version, wheel=False)
            tars.append(gzip.decompress(path.read_bytes()))
            provs.append(_archive_prov(path, package, version) | {"unpacked": "gzip -d (the .tar inside)"})
        return Built(
            f"{package} sdist tar {old}→{new}",
            f"PyPI sdists of {package} {old} and {new}, .tar.gz unpacked to .tar",
            {"origin": "pip download --no-deps --no-binary", "old": provs[0], "new": provs[1]},
            tars[1],
            tars[0],
        )

    return build


def _wheel_pair(package: str, old: str, new: str, member: str) -> Callable[[Context], Built]:
    def build(ctx: Context) -> Built:
        blobs, provs = [], []
        for version in (old, new):
            path = _pip_download(ctx, package, version, wheel=True)
            with zipfile.ZipFile(path) as z:
                try:
                    blobs.append(z.read(member))
                except KeyError:
                    raise Unavailable(f"{path.name} has no member {member}") from None
            provs.append(_archive_prov(path, package, version) | {"member": member})
        base = member.rsplit("/", 1)[-1]
        return Built(
            f"{base} {package} {old}→{new}",
            f"{member} from the PyPI wheels of {package} {old} and {new} (cp311, manylinux x86_64)",
            {"origin": "pip download --no-deps --only-binary", "tags": " ".join(WHEEL_TAGS), "old": provs[0]}
            | {"new": provs[1]},
            blobs[1],
            blobs[0],
        )

    return build


# ---------------------------------------------------------------------------------- CPython under pyenv


def _pythons(ctx: Context) -> tuple[tuple[str, Path], tuple[str, Path]]:
    """(version, stdlib directory) of the newest patch release of the two newest CPython minor versions
    installed under ``pyenv root``."""
    if "pythons" not in ctx.memo:
        root = _pyenv_root_or_none()
        if root is None:
            ctx.memo["pythons"] = Unavailable("no pyenv here (`pyenv root` does not answer)")
        else:
            newest: dict[tuple[int, int], tuple[tuple[int, int, int], Path]] = {}
            for d in Path(root, "versions").iterdir():
                m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", d.name)
                if not m:
                    continue
                v = (int(m[1]), int(m[2]), int(m[3]))
                lib = d / "lib" / f"python{v[0]}.{v[1]}"
                if (lib / "typing.py").is_file() and v > newest.get(v[:2], ((0, 0, 0), lib))[0]:
                    newest[v[:2]] = (v, lib)
            found = [newest[k] for k in sorted(newest)][-2:]
            if len(found) < 2:
                ctx.memo["pythons"] = Unavailable("fewer than two CPython minor versions under pyenv")
            else:
                ctx.memo["pythons"] = tuple((".".join(map(str, v)), lib) for v, lib in found)
    pythons = ctx.memo["pythons"]
    if isinstance(pythons, Unavailable):
        raise pythons
    return pythons  # type: ignore[no-any-return]


def _cpython(what: str, sub: str | None, desc: str, *, single: bool = False) -> Callable[[Context], Built]:
    """A pair from the two CPython versions: ``sub`` of the standard library (``None``: all of it; a path
    starting with ``../../include`` reaches the C headers), as a reproducible tarball or, ``single``, the
    file itself."""

    def build(ctx: Context) -> Built:
        (va, a), (vb, b) = _pythons(ctx)
        paths = []
        for lib in (a, b):
            p = lib if sub is None else lib / sub.replace("{X.Y}", lib.name.removeprefix("python"))
            paths.append(p.resolve())
        if not all(p.exists() for p in paths):
            raise Unavailable(f"{what} is missing in one of CPython {va}, {vb}")
        if single:
            old, new = paths[0].read_bytes(), paths[1].read_bytes()
            how = short = "the file itself"
        else:
            old, new = reproducible_tar(paths[0]), reproducible_tar(paths[1])
            short = "as reproducible tarballs"
            how = "reproducible tarball (sorted names, mtime 0, uid/gid 0, mode 0644)"
            how += ", without " + ", ".join(sorted(STDLIB_EXCLUDE)) + " and *.so"
        return Built(
            f"{what} CPython {va}→{vb}",
            f"{desc} of CPython {va} and {vb} under pyenv, {short}",
            {"origin": "pyenv", "old": _shown(paths[0]), "new": _shown(paths[1]), "form": how},
            new,
            old,
        )

    return build


# ---------------------------------------------------------------------------------------------- dpkg data

STATUS = Path("/var/lib/dpkg/status")
STATUS_OLD = Path("/var/lib/dpkg/status-old")


def _status_bytes(ctx: Context) -> bytes:
    if "status" not in ctx.memo:
        if not STATUS.is_file():
            raise Unavailable(f"{STATUS} is not on this system (not Debian-based)")
        ctx.memo["status"] = STATUS.read_bytes()
    data: bytes = ctx.memo["status"]
    return data


def _dpkg_pair(ctx: Context) -> Built:
    if not STATUS.is_file() or not STATUS_OLD.is_file():
        raise Unavailable(f"{STATUS} or {STATUS_OLD} is not on this system")
    old, new = STATUS_OLD.read_bytes(), _status_bytes(ctx)
    if old == new:
        raise Unavailable(f"{STATUS_OLD} is identical to {STATUS} (no dpkg change since)")
    return Built(
        "dpkg status db",
        f"{STATUS_OLD} → {STATUS}: the package-status database before and after dpkg's last change",
        {"origin": "installed file", "old": str(STATUS_OLD), "new": str(STATUS)},
        new,
        old,
    )


_ROT = bytes.maketrans(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    b"1234567890bcdefghijklmnopqrstuvwxyzaBCDEFGHIJKLMNOPQRSTUVWXYZA",
)


def _dpkg_edited(ctx: Context) -> Built:
    old = _status_bytes(ctx)
    lines = old.split(b"\n")
    rng = random.Random(SEED)
    candidates = [i for i, ln in enumerate(lines) if len(ln) > 4]
    chosen = sorted(rng.sample(candidates, max(1, round(0.02 * len(lines)))))
    for i in chosen:
        ln = lines[i]
        start = ln.find(b": ") + 2 if b": " in ln else 1
        start = min(start, len(ln) - 1)
        length = rng.randint(1, 16)
        lines[i] = ln[:start] + ln[start : start + length].translate(_ROT) + ln[start + length :]
    new = b"\n".join(lines)
    assert len(new) == len(old)
    return Built(
        "dpkg status, 2 % of lines edited (derived)",
        f"{STATUS} and a copy with 2 % of its lines edited in place (derived from the real file)",
        {
            "origin": "derived from an installed file",
            "old": str(STATUS),
            "edit": f"{len(chosen)} of {len(lines)} lines (random.Random({SEED})): a span of 1-16 bytes"
            " after the field name rotated (0→1 … 9→0, a→b … z→a), same length",
        },
        new,
        old,
        derived=True,
    )


def _status_records(ctx: Context) -> list[dict[str, str]]:
    records = []
    for para in _status_bytes(ctx).decode("utf-8", "backslashreplace").split("\n\n"):
        rec: dict[str, str] = {}
        key = ""
        for line in para.split("\n"):
            if line[:1] in (" ", "\t") and key:
                rec[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                rec[key] = value.strip()
        if "Package" in rec:
            records.append(rec)
    return records


def _sqlite_versions(
    table: str,
    schema: str,
    columns: list[str],
    rows: list[tuple[Any, ...]],
    update: Callable[[tuple[Any, ...]], dict[str, Any]],
    update_sql: str,
) -> tuple[bytes, bytes, dict[str, Any]]:
    """The database of ``rows`` less 2 % held out, and its next version: 3 % of the rows UPDATEd, 1 %
    DELETEd and the held-out 2 % INSERTed, by real SQL in one transaction."""
    rng = random.Random(SEED)
    n = len(rows)
    held = set(rng.sample(range(n), round(0.02 * n)))
    first = [r for i, r in enumerate(rows) if i not in held]
    inserted = [r for i, r in enumerate(rows) if i in held]
    placeholders = ", ".join("?" * len(columns))
    insert_sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d, "db.sqlite")
        con = sqlite3.connect(path)
        con.executescript(schema)
        con.executemany(insert_sql, first)
        con.commit()
        con.close()
        old = path.read_bytes()
        con = sqlite3.connect(path)
        rowids = [r[0] for r in con.execute(f"SELECT rowid FROM {table} ORDER BY rowid")]
        picked = rng.sample(rowids, round(0.04 * len(rowids)))
        updated, deleted = (
            sorted(picked[: round(0.03 * len(rowids))]),
            sorted(picked[round(0.03 * len(rowids)) :]),
        )
        values = {
            r[0]: r[1:]
            for r in con.execute(f"SELECT rowid, {', '.join(columns)} FROM {table} ORDER BY rowid")
        }
        with con:
            con.executemany(update_sql, [update(values[i]) | {"rowid": i} for i in updated])
            con.executemany(f"DELETE FROM {table} WHERE rowid = ?", [(i,) for i in deleted])
            con.executemany(insert_sql, inserted)
        con.close()
        new = path.read_bytes()
    sql = {
        "schema": schema.strip(),
        "first_version": f"{insert_sql} for {len(first)} rows (2 % of the {n} records held out)",
        "next_version": [
            f"{update_sql} for {len(updated)} rows",
            f"DELETE FROM {table} WHERE rowid = ? for {len(deleted)} rows",
            f"{insert_sql} for the {len(inserted)} held-out records",
        ],
        "rows_chosen_by": f"random.Random({SEED})",
        "sqlite": sqlite3.sqlite_version,
    }
    return old, new, sql


def _sqlite_packages(ctx: Context) -> Built:
    cols = ["package", "version", "architecture", "installed_size", "section", "priority", "maintainer"]
    keys = ["Package", "Version", "Architecture", "Installed-Size", "Section", "Priority", "Maintainer"]
    rows = [
        tuple(int(r[k]) if k == "Installed-Size" and r.get(k, "").isdigit() else r.get(k) for k in keys)
        for r in _status_records(ctx)
    ]
    schema = (
        "CREATE TABLE packages (package TEXT NOT NULL, version TEXT NOT NULL, architecture TEXT,"
        " installed_size INTEGER, section TEXT, priority TEXT, maintainer TEXT);"
    )

    def update(row: tuple[Any, ...]) -> dict[str, Any]:
        return {"version": f"{row[1]}+deb12u1", "size": (row[3] or 0) + 4}

    update_sql = "UPDATE packages SET version = :version, installed_size = :size WHERE rowid = :rowid"
    old, new, sql = _sqlite_versions("packages", schema, cols, rows, update, update_sql)
    sql["updated_values"] = "a security update: version || '+deb12u1', installed_size + 4 (KiB)"
    return Built(
        "SQLite dpkg packages db",
        f"SQLite table of the {len(rows)} package records of {STATUS}, next version by SQL",
        {"origin": "built from an installed file", "records": str(STATUS), "sql": sql},
        new,
        old,
    )


def _sqlite_files(ctx: Context) -> Built:
    info = Path("/var/lib/dpkg/info")
    lists = sorted(info.glob("*.md5sums")) if info.is_dir() else []
    if not lists:
        raise Unavailable(f"no {info}/*.md5sums on this system (not Debian-based)")
    rows = []
    for f in lists:
        package = f.name.removesuffix(".md5sums")
        for line in f.read_text("utf-8", "backslashreplace").splitlines():
            md5, _, path = line.partition("  ")
            if path:
                rows.append((package, "/" + path, md5))
    schema = (
        "CREATE TABLE files (package TEXT NOT NULL, path TEXT NOT NULL, md5 TEXT NOT NULL);"
        "CREATE INDEX files_package ON files (package);"
    )

    def update(row: tuple[Any, ...]) -> dict[str, Any]:
        return {"md5": hashlib.md5((row[2] + row[1]).encode()).hexdigest()}

    update_sql = "UPDATE files SET md5 = :md5 WHERE rowid = :rowid"
    old, new, sql = _sqlite_versions("files", schema, ["package", "path", "md5"], rows, update, update_sql)
    sql["updated_values"] = "a new checksum for an upgraded file: md5(old md5 || path)"
    return Built(
        "SQLite dpkg files db",
        f"SQLite table of the {len(rows)} (package, path, md5) records of {info}/*.md5sums, next by SQL",
        {
            "origin": "built from installed files",
            "records": f"{info}/*.md5sums ({len(lists)} files)",
            "sql": sql,
        },
        new,
        old,
    )


def _changelogs(ctx: Context) -> Built:
    doc = Path("/usr/share/doc")
    members = sorted(
        p
        for p in doc.glob("*/changelog.Debian.gz")
        if p.is_file() and not p.is_symlink() and not p.parent.is_symlink()
    )
    if not members:
        raise Unavailable(f"no {doc}/*/changelog.Debian.gz on this system")
    data = b"".join(gzip.decompress(p.read_bytes()) for p in members)
    return Built(
        "Debian changelogs",
        f"{len(members)} {doc}/*/changelog.Debian.gz decompressed and concatenated in path order",
        {"origin": "installed files", "members": len(members), "packages": [p.parent.name for p in members]},
        data,
    )


# ------------------------------------------------------------------------------------------------- specs


def specs() -> list[Spec]:
    """Every item the corpus can hold, in a fixed order."""
    return [
        *_installed_specs(),
        Spec("debian-changelogs", "text", _changelogs),
        Spec(
            "cpython-typing.py",
            "text",
            _cpython("typing.py", "typing.py", "lib/python3.*/typing.py", single=True),
        ),
        Spec("cpython-json-tar", "tar", _cpython("json/ tar", "json", "the json package")),
        Spec("cpython-asyncio-tar", "tar", _cpython("asyncio/ tar", "asyncio", "the asyncio package")),
        Spec(
            "cpython-encodings-tar", "tar", _cpython("encodings/ tar", "encodings", "the encodings package")
        ),
        Spec(
            "cpython-include-tar",
            "tar",
            _cpython("C headers tar", "../../include/python{X.Y}", "include/python3.*/"),
        ),
        Spec(
            "cpython-ensurepip-tar",
            "tar",
            _cpython("ensurepip/ tar", "ensurepip", "ensurepip (bundled pip wheel)"),
        ),
        Spec("cpython-stdlib-tar", "tar", _cpython("stdlib tar", None, "the whole standard library")),
        Spec("click-sdist-tar", "tar", _sdist_pair("click", "8.3.2", "8.3.3")),
        Spec("django-sdist-tar", "tar", _sdist_pair("django", "5.2.18", "5.2.19")),
        Spec(
            "pyarrow-libarrow.so",
            "ELF",
            _wheel_pair("pyarrow", "26.0.0", "26.0.1", "pyarrow/libarrow.so.2600"),
        ),
        Spec(
            "llvmlite-libllvmlite.so",
            "ELF",
            _wheel_pair("llvmlite", "0.49.0", "0.50.0", "llvmlite/binding/libllvmlite.so"),
        ),
        Spec("dpkg-status", "text db", _dpkg_pair),
        Spec("dpkg-status-edited", "text db", _dpkg_edited),
        Spec("sqlite-packages", "SQLite", _sqlite_packages),
        Spec("sqlite-files", "SQLite", _sqlite_files),
    ]


# ------------------------------------------------------------------------------------------------- cache


def _load_manifest(directory: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return {"version": MANIFEST_VERSION, "items": {}}
    if doc.get("version") != MANIFEST_VERSION:
        return {"version": MANIFEST_VERSION, "items": {}}
    return doc


def _save_manifest(directory: Path, doc: dict[str, Any]) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(directory / MANIFEST)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _item(directory: Path, entry: dict[str, Any]) -> Item | None:
    """The cached item of a manifest entry, if its files are there with the recorded sizes."""
    path = directory / entry["file"]
    old = directory / entry["old_file"] if entry.get("old_file") else None
    if not path.is_file() or path.stat().st_size != entry["bytes"]:
        return None
    if old is not None and (not old.is_file() or old.stat().st_size != entry["old_bytes"]):
        return None
    return Item(
        id=entry["id"],
        name=entry["name"],
        family=entry["family"],
        source=entry["source"],
        provenance=entry["provenance"],
        path=path,
        old_path=old,
        size=entry["bytes"],
        old_size=entry.get("old_bytes"),
        derived=entry.get("derived", False),
    )


def matches(only: str | None, *names: str) -> bool:
    return only is None or any(only.lower() in n.lower() for n in names)


def build(
    directory: Path | None = None,
    *,
    only: str | None = None,
    offline: bool = False,
    refresh: bool = False,
    log: Callable[[str], None] | None = None,
) -> Corpus:
    """The corpus items matching ``only`` (a case-insensitive substring of the id or name), building and
    caching the missing ones."""
    directory = (directory or default_dir()).expanduser()
    (directory / "items").mkdir(parents=True, exist_ok=True)
    say = log or (lambda s: print(s, file=sys.stderr))
    ctx = Context(directory, offline, say)
    manifest = _load_manifest(directory)
    entries: dict[str, Any] = manifest["items"]
    items: list[Item] = []
    skipped: list[dict[str, str]] = []
    t0 = time.perf_counter()
    for spec in specs():
        cached = entries.get(spec.id)
        if not matches(only, spec.id, cached["name"] if cached else ""):
            continue
        item = None if refresh or cached is None else _item(directory, cached)
        if item is None:
            t = time.perf_counter()
            try:
                built = spec.build(ctx)
            except Unavailable as e:
                say(f"corpus: skipped {spec.id}: {e}")
                skipped.append({"id": spec.id, "reason": str(e)})
                continue
            entry = _store(directory, spec, built)
            entries[spec.id] = entry
            manifest["updated"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            _save_manifest(directory, manifest)
            item = _item(directory, entry)
            assert item is not None
            say(f"corpus: built {item.name} ({_mib(item)}) in {time.perf_counter() - t:.1f} s")
        items.append(item)
    last = manifest.setdefault("skipped", {})
    for i in items:
        last.pop(i.id, None)
    last.update({s["id"]: s["reason"] for s in skipped})
    _save_manifest(directory, manifest)
    return Corpus(directory, items, skipped, time.perf_counter() - t0)


def _store(directory: Path, spec: Spec, built: Built) -> dict[str, Any]:
    file = f"items/{spec.id}"
    _write(directory / file, built.new)
    entry: dict[str, Any] = {
        "id": spec.id,
        "name": built.name,
        "family": spec.family,
        "kind": "file" if built.old is None else "pair",
        "source": built.source,
        "derived": built.derived,
        "file": file,
        "bytes": len(built.new),
        "sha256": sha256(built.new),
    }
    if built.old is not None:
        entry["old_file"] = file + ".old"
        _write(directory / entry["old_file"], built.old)
        entry["old_bytes"] = len(built.old)
        entry["old_sha256"] = sha256(built.old)
    entry["provenance"] = built.provenance
    entry["built"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return entry


def _mib(item: Item) -> str:
    if item.old_size is None:
        return f"{item.size / MiB:.2f} MiB"
    return f"{item.old_size / MiB:.2f} → {item.size / MiB:.2f} MiB"


def iter_lines(corpus: Corpus) -> Iterator[str]:
    for item in corpus.items:
        yield f"  {item.name:46} {item.family:8} {_mib(item):>22}  {item.source}"
    for s in corpus.skipped:
        yield f"  skipped {s['id']}: {s['reason']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--corpus-dir", type=Path, default=None, help=f"cache directory (default ${ENV_VAR} or {DEFAULT_DIR})"
    )
    ap.add_argument("--only", metavar="SUBSTRING", help="only the items whose id or name contains it")
    ap.add_argument("--offline", action="store_true", help="download nothing; items not cached are skipped")
    ap.add_argument("--refresh", action="store_true", help="rebuild the (matching) items even if cached")
    args = ap.parse_args()
    corpus = build(args.corpus_dir, only=args.only, offline=args.offline, refresh=args.refresh)
    total = sum(i.size + (i.old_size or 0) for i in corpus.items)
    print(f"corpus in {corpus.dir}: {len(corpus.items)} items, {total / MiB:.0f} MiB, {corpus.build_s:.1f} s")
    for line in iter_lines(corpus):
        print(line)


if __name__ == "__main__":
    main()
