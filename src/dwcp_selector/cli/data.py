"""``collect``, ``validate``, ``export``, ``retention`` and ``import``: staging telemetry and the dataset."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..config import Settings
from ..costmodel import DEFAULT_STRATEGY_ORDER as STRATEGIES
from ..errors import ConfigError
from ._app import cli, emit, stdout
from ._params import MAX_SAMPLES, MAX_WORKERS, SEED

# The data commands import the telemetry and dataset stages (pyarrow, psycopg) when they run, so the
# other commands start without them.
DEFAULT_RETENTION_DAYS = 90

__all__ = ["collect_cmd", "export_cmd", "import_cmd", "retention_cmd", "validate_cmd"]


F = TypeVar("F", bound=Callable[..., Any])


def _store_option(f: F) -> F:
    return click.option(
        "--store",
        "store_url",
        default=lambda: Settings.from_env().store_url,
        show_default="$DWCP_STORE_URL or sqlite:///dwcp-telemetry.db",
        help="Telemetry store: sqlite:///path or postgresql://…",
    )(f)


def _date(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        d = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"not an ISO date or time: {value!r}") from exc
    return d if d.tzinfo else d.replace(tzinfo=dt.UTC)


@cli.command("collect")
@_store_option
@click.option(
    "--samples", type=click.IntRange(1, MAX_SAMPLES), required=True, help="Labelled records to collect."
)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--corpus",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Real files to draw payloads from (instead of this machine's own).",
)
@click.option(
    "--system-corpus/--no-system-corpus",
    default=True,
    show_default=True,
    help="Draw a share of the sessions from this machine's real files (binaries, docs, package "
    "databases, archives, the Python sources, a SQLite database of package records).",
)
@click.option("--workers", type=click.IntRange(1, MAX_WORKERS), default=1, show_default=True)
@click.option(
    "--draws", type=click.IntRange(1, 1000), default=8, show_default=True, help="Link/node draws per payload."
)
@click.option(
    "--max-size",
    type=click.IntRange(1024, 1 << 32),
    default=64 << 20,
    show_default=True,
    help="Largest payload (bytes).",
)
@click.option("--start", help="First day of the staging clock (ISO date; default 14 days ago).")
@click.option(
    "--profile-every",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Measure this host's speed profile again once it is this many seconds old (0: never); every "
    "record carries the profile current when it was measured.",
)
@click.option("--json", "as_json", is_flag=True)
def collect_cmd(
    store_url: str,
    samples: int,
    seed: int,
    corpus: Path | None,
    system_corpus: bool,
    workers: int,
    draws: int,
    max_size: int,
    start: str | None,
    profile_every: float,
    as_json: bool,
) -> None:
    """Run every strategy for real on staging transfers and store one labelled record per draw."""
    from ..hostprofile import load_or_calibrate
    from ..telemetry.staging import collect
    from ..telemetry.store import open_store
    from ..workload.corpus import Corpus
    from ..workload.staging import ScenarioMix

    mix = ScenarioMix(draws_per_payload=draws, max_bytes=max_size)
    first_day = _date(start)
    if corpus is not None:
        Corpus(corpus)
    # refuse a store that cannot be opened or reached before measuring this host (seconds, once per host)
    open_store(store_url).close()
    every = profile_every or None
    profile = load_or_calibrate(max_age_s=every)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=as_json or not sys.stderr.isatty(), console=None) as progress:
        task = progress.add_task("collecting records", total=samples)
        report = collect(
            store_url,
            samples,
            seed,
            corpus=corpus,
            system_corpus=system_corpus,
            workers=workers,
            mix=mix,
            start=first_day,
            host_profile=profile,
            profile_every_s=every,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    doc = report.to_dict()
    emit(
        as_json,
        doc,
        lambda: stdout.print(
            f"collected {report.records:,} records ({report.inserted:,} new) "
            f"from {report.payloads:,} payloads in "
            f"{report.sessions:,} sessions into {store_url} in {report.seconds:,.0f} s "
            f"({doc['records_per_s']} records/s)"
        ),
    )


@cli.command("validate")
@_store_option
@click.option("--min-rows", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def validate_cmd(store_url: str, min_rows: int, as_json: bool) -> None:
    """Check the store's data quality; exit code 1 when it is below the bars."""
    from ..dataset.quality import BARS, HDE_AMST_TARGET, assess
    from ..telemetry.store import open_store

    with open_store(store_url, must_exist=True) as store:
        table = store.read_table()
    report = assess(table, min_rows=min_rows)
    doc = report.to_dict()

    def human() -> None:
        stdout.print(
            f"{report.rows:,} rows; quality score [bold]{report.quality_score:.4f}[/] "
            f"(bar > {BARS['quality_score']}); missing {report.missing_share:.2%}"
        )
        stdout.print("  " + ", ".join(f"{k} {v:.4f}" for k, v in report.components.items()))
        t = Table(title="oracle labels by link type", title_justify="left")
        t.add_column("link")
        t.add_column("rows", justify="right")
        for s in STRATEGIES:
            t.add_column(s, justify="right")
        t.add_row("all", "100%", *(f"{report.class_shares[s]:.1%}" for s in STRATEGIES))
        for link, shares in report.class_shares_by_link.items():
            t.add_row(link, f"{report.link_shares[link]:.1%}", *(f"{shares[s]:.1%}" for s in STRATEGIES))
        stdout.print(t)
        if report.hde_amst_balance is not None:
            stdout.print(
                f"HDE:AMST balance {report.hde_amst_balance:.1%} "
                f"(roadmap {HDE_AMST_TARGET[0]:.0%}-{HDE_AMST_TARGET[1]:.0%})"
            )
        for w in report.warnings:
            stdout.print(f"[yellow]warning:[/] {w}")
        for f in report.failures:
            stdout.print(f"[red]below the bar:[/] {f}")
        stdout.print("[green]passed[/]" if report.passed else "[red]failed[/]")

    emit(as_json, doc, human)
    if not report.passed:
        sys.exit(1)


@cli.command("export")
@_store_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--all-test", is_flag=True, help="Put every record in the test split.")
@click.option("--holdout-type", multiple=True, help="Payload type kept out of train/val/test (repeatable).")
@click.option("--no-csv", is_flag=True, help="Parquet only.")
@click.option("--json", "as_json", is_flag=True)
def export_cmd(
    store_url: str, out_dir: Path, all_test: bool, holdout_type: tuple[str, ...], no_csv: bool, as_json: bool
) -> None:
    """Export the store as Parquet and CSV splits (70/15/15 by session and time) with statistics."""
    from ..dataset.export import export_dataset
    from ..telemetry.store import open_store

    with open_store(store_url, must_exist=True) as store:
        table = store.read_table()
    report = export_dataset(
        table,
        out_dir,
        all_test=all_test,
        holdout_types=holdout_type,
        source=store_url.split("@")[-1],
        csv=not no_csv,
    )
    emit(
        as_json,
        report.to_dict(),
        lambda: stdout.print(
            "exported "
            + ", ".join(f"{k} {v:,}" for k, v in report.rows.items() if v)
            + f" rows to {out_dir} "
            f"(manifest.json, stats.md)"
        ),
    )


@cli.command("retention")
@_store_option
@click.option("--archive", "archive_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--keep-days", type=click.IntRange(min=1), default=DEFAULT_RETENTION_DAYS, show_default=True)
@click.option("--now", help="The clock to apply retention against (ISO time; default now).")
@click.option("--json", "as_json", is_flag=True)
def retention_cmd(store_url: str, archive_dir: Path, keep_days: int, now: str | None, as_json: bool) -> None:
    """Archive days older than --keep-days to Parquet, then drop them from the store."""
    from ..telemetry.store import open_store

    with open_store(store_url, must_exist=True) as store:
        report = store.apply_retention(archive_dir, now=_date(now), keep_days=keep_days)
    doc = {
        "cutoff": report.cutoff.isoformat(),
        "archived": [{"day": d.isoformat(), "rows": n, "file": p} for d, n, p in report.archived],
        "rows": report.rows,
    }
    emit(
        as_json,
        doc,
        lambda: stdout.print(
            f"archived and dropped {len(report.archived)} day(s), {report.rows:,} rows, older than "
            f"{report.cutoff:%Y-%m-%d} → {archive_dir}"
        ),
    )


@cli.command("import")
@_store_option
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--json", "as_json", is_flag=True)
def import_cmd(store_url: str, files: tuple[Path, ...], as_json: bool) -> None:
    """Write Parquet files of telemetry records into the store: days that retention archived, or another
    host's records (a store's table written as Parquet). Rows already stored are skipped."""
    from ..telemetry.store import import_records, open_records, open_store

    for path in files:  # every file checked before the store is opened (or created)
        open_records(path)
    done: list[dict[str, Any]] = []
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn())
    with (
        open_store(store_url) as store,
        Progress(*columns, disable=as_json or not sys.stderr.isatty(), console=None) as progress,
    ):
        for path in files:
            task = progress.add_task(f"importing {path.name}", total=None)

            def advance(n: int, total: int, task: TaskID = task) -> None:
                progress.update(task, completed=n, total=total)

            read, new = import_records(store, path, on_progress=advance)
            done.append({"file": str(path), "rows": read, "new": new})
        rows = store.count()
    doc = {"store": store_url, "files": done, "store_rows": rows}
    emit(
        as_json,
        doc,
        lambda: stdout.print(
            "; ".join(f"{d['file']}: {d['rows']:,} rows ({d['new']:,} new)" for d in done)
            + f" → {store_url} ({rows:,} rows)"
        ),
    )
