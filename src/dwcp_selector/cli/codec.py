"""``measure``, ``encode``, ``decode`` and ``dict train``: the strategies on the user's own files."""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click
import xxhash
from rich.table import Table

from ..config import Settings
from ..link import LINK_CLASSES, SystemState, link_from_class
from ..measure import measure_payload
from ..strategies import Baseline, DictionaryStore, PayloadCodec, Registry, default_registry
from ..strategies.payload import pack_container_header
from ._app import cli, emit, stdout
from ._params import FiniteFloatRange

__all__ = ["decode_cmd", "dict_group", "encode_cmd", "measure_cmd"]


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[memoryview]:
    """The file's bytes without reading them into the heap (an empty file maps to an empty view)."""
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield memoryview(b"")
            return
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(m)
        try:
            yield view
        finally:
            # An exception's traceback may still hold slices of the map; it is unmapped when they go.
            with contextlib.suppress(BufferError):
                view.release()
                m.close()


def _baseline(path: Path | None, baseline_id: str | None) -> Baseline | None:
    if path is None:
        return None
    return Baseline(baseline_id or path.name, path.read_bytes())


def _registry(dict_dir: Path | None, checksum: str | None = None) -> Registry:
    settings = Settings.from_env()
    directory = dict_dir or (Path(settings.dict_dir) if settings.dict_dir else None)
    store = DictionaryStore(directory) if directory is not None else None
    return default_registry(dictionaries=store, checksum=checksum or settings.checksum)


@contextlib.contextmanager
def _atomic_output(path: Path) -> Iterator[BinaryIO]:
    """Write to a temporary file beside ``path`` and rename it into place only on success."""
    directory = path.resolve().parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:  # name the output the user gave, not the temporary file
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_link_options = [
    click.option(
        "--link",
        "link_type",
        type=click.Choice(list(LINK_CLASSES)),
        default="wan",
        show_default=True,
        help="Link class; parameters not given take the class's typical values.",
    ),
    click.option("--bandwidth-mbps", type=FiniteFloatRange(min=0, min_open=True), help="Link capacity."),
    click.option("--rtt-ms", type=FiniteFloatRange(min=0, min_open=True), help="Round-trip time."),
    click.option("--loss", type=FiniteFloatRange(0, 1, max_open=True), help="Packet loss probability."),
    click.option(
        "--utilization", type=FiniteFloatRange(0, 1, max_open=True), help="Share of capacity in use."
    ),
    click.option(
        "--free-cores",
        type=FiniteFloatRange(min=0, min_open=True),
        default=4.0,
        show_default=True,
        help="Free CPU cores on the sending and receiving nodes.",
    ),
]


F = TypeVar("F", bound=Callable[..., Any])


def link_options(f: F) -> F:
    """The link and node options shared by the commands that price a transfer."""
    for option in reversed(_link_options):
        f = option(f)
    return f


@cli.command("measure")
@click.argument("file", type=_FILE)
@click.option("--baseline", type=_FILE, help="Previous version of FILE: offers the hde strategy.")
@link_options
@click.option("--payload-type", help="Payload type, for zstd's per-type dictionaries.")
@click.option("--dict-dir", type=click.Path(file_okay=False, path_type=Path), help="zstd dictionary store.")
@click.option(
    "--repeats",
    type=click.IntRange(1, 10_000),
    help="Timing repeats, the least kept (default: 25 under 64 KiB, 5 under 1 MiB, else 1).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def measure_cmd(
    file: Path,
    baseline: Path | None,
    link_type: str,
    bandwidth_mbps: float | None,
    rtt_ms: float | None,
    loss: float | None,
    utilization: float | None,
    free_cores: float,
    payload_type: str | None,
    dict_dir: Path | None,
    repeats: int | None,
    as_json: bool,
) -> None:
    """Run every offered strategy on FILE for real and price it on a link: the oracle's label."""
    link = link_from_class(
        link_type, bandwidth_mbps=bandwidth_mbps, rtt_ms=rtt_ms, loss=loss, utilization=utilization
    )
    system = SystemState(free_cores=free_cores)
    base = _baseline(baseline, None)
    codec = PayloadCodec(_registry(dict_dir))
    with _mapped(file) as payload:
        report = measure_payload(
            payload, link, system, baseline=base, payload_type=payload_type, codec=codec, repeats=repeats
        )
    failed = [s for s, r in report.runs.items() if not r.roundtrip]

    def human() -> None:
        table = Table(title=f"{file.name}: {report.payload_bytes:,} bytes", title_justify="left")
        for col in ("strategy", "compressed", "ratio", "encode ms", "decode ms", "cost ms", "round trip"):
            table.add_column(col, justify="left" if col == "strategy" else "right")
        for name, run in report.runs.items():
            ratio = report.payload_bytes / run.compressed_bytes if run.compressed_bytes else float("inf")
            cost = report.costs.get(name)
            table.add_row(
                f"[bold]{name}[/]" if name == report.oracle else name,
                f"{run.compressed_bytes:,}",
                f"{ratio:.2f}",
                f"{run.encode_s * 1e3:.3f}",
                f"{run.decode_s * 1e3:.3f}",
                f"{cost * 1e3:.3f}" if cost is not None else "-",
                "ok" if run.roundtrip else f"[red]FAILED[/] {run.error}",
            )
        stdout.print(table)
        stdout.print(
            f"link {link.link_type}: {link.capacity_bps / 1e6:,.0f} Mbit/s, RTT {link.rtt_s * 1e3:.3g} ms, "
            f"loss {link.loss:.2g}, utilization {link.utilization:.0%}; {report.streams} AMST streams; "
            f"{free_cores:g} free cores"
        )
        stdout.print(f"oracle: [bold]{report.oracle}[/]")

    emit(as_json, report.to_dict(), human)
    if failed:
        raise click.ClickException(f"strategies failed their round trip: {', '.join(failed)}")


@cli.command("encode")
@click.argument("file", type=_FILE)
@click.option("-s", "--strategy", required=True, type=click.Choice(["none", "lz4", "zstd", "hde"]))
@click.option("--baseline", type=_FILE, help="Previous version of FILE (required by hde).")
@click.option("--baseline-id", help="Name of the baseline in the frames (default: its file name).")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--payload-type", help="Payload type, for zstd's per-type dictionaries.")
@click.option("--dict-dir", type=click.Path(file_okay=False, path_type=Path), help="zstd dictionary store.")
@click.option("--checksum", type=click.Choice(["xxh3", "crc32c"]), help="Frame checksum (default xxh3).")
@click.option("--json", "as_json", is_flag=True)
def encode_cmd(
    file: Path,
    strategy: str,
    baseline: Path | None,
    baseline_id: str | None,
    out: Path,
    payload_type: str | None,
    dict_dir: Path | None,
    checksum: str | None,
    as_json: bool,
) -> None:
    """Encode FILE with one strategy into OUT (chunked, self-describing, checksummed)."""
    codec = PayloadCodec(_registry(dict_dir, checksum))
    base = _baseline(baseline, baseline_id)
    encoder = codec.registry.get(strategy)
    with _mapped(file) as payload, _atomic_output(out) as f:
        count = codec.chunk_count(len(payload))
        written = 0
        if count > 1:
            header = pack_container_header(
                encoder.strategy_id, len(payload), codec.chunk_size, count, xxhash.xxh3_64_intdigest(payload)
            )
            f.write(header)
            written += len(header)
        for _, frame in codec.iter_encode(payload, strategy, baseline=base, payload_type=payload_type):
            f.write(frame)
            written += len(frame)
        size = len(payload)
    doc = {
        "input_bytes": size,
        "output_bytes": written,
        "strategy": strategy,
        "chunks": count,
        "out": str(out),
    }
    emit(
        as_json,
        doc,
        lambda: stdout.print(
            f"{file.name}: {size:,} → {written:,} bytes ({size / max(written, 1):.2f}×) with {strategy}, "
            f"{count} chunk(s) → {out}"
        ),
    )


@cli.command("decode")
@click.argument("frame", type=_FILE)
@click.option("--baseline", type=_FILE, help="The baseline the frames were encoded against (hde).")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dict-dir", type=click.Path(file_okay=False, path_type=Path), help="zstd dictionary store.")
@click.option("--json", "as_json", is_flag=True)
def decode_cmd(frame: Path, baseline: Path | None, out: Path, dict_dir: Path | None, as_json: bool) -> None:
    """Decode FRAME (a file written by encode) into OUT, verifying every checksum."""
    codec = PayloadCodec(_registry(dict_dir))
    base = _baseline(baseline, None)
    with _mapped(frame) as data, _atomic_output(out) as f:
        written = codec.decode_to(data, f, baseline=base)
        size = len(data)
    doc = {"input_bytes": size, "output_bytes": written, "out": str(out)}
    emit(as_json, doc, lambda: stdout.print(f"{frame.name}: {size:,} → {written:,} bytes, verified → {out}"))


@cli.group("dict")
def dict_group() -> None:
    """zstd dictionaries per payload type."""


@dict_group.command("train")
@click.option("--type", "payload_type", required=True, help="Payload type the dictionary is for.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--size", type=click.IntRange(1024, 1 << 24), default=16384, show_default=True, help="Dictionary bytes."
)
@click.option(
    "--sample-size",
    type=click.IntRange(min=64),
    default=4096,
    show_default=True,
    help="Files are cut into samples of this size.",
)
@click.argument("files", nargs=-1, required=True, type=_FILE)
@click.option("--json", "as_json", is_flag=True)
def dict_train_cmd(
    payload_type: str, out_dir: Path, size: int, sample_size: int, files: tuple[Path, ...], as_json: bool
) -> None:
    """Train a dictionary for small payloads of one type from sample FILES."""
    samples: list[bytes] = []
    for path in files:
        data = path.read_bytes()
        samples.extend(data[i : i + sample_size] for i in range(0, len(data), sample_size))
    d = DictionaryStore(out_dir).train(payload_type, samples, size)
    emit(
        as_json,
        d.manifest,
        lambda: stdout.print(
            f"dictionary {d.stem} for {payload_type!r}: {len(d.content):,} bytes from {len(samples)} samples "
            f"→ {out_dir}"
        ),
    )
