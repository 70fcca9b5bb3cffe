"""``models``: the model registry (register, promote, roll back, list, show) and a model's test vectors;
``serve``: the HTTP service."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from ..config import Settings
from ..errors import ConfigError
from ..serving.registry import ALIASES, ModelRegistry
from ._app import cli, emit, stdout

__all__ = ["models_group", "serve_cmd"]

_REGISTRY = click.option(
    "--registry",
    "registry_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The registry directory.",
)
_WHY = click.option("--why", required=True, help="Why (kept in the history with when and who).")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _open(registry_dir: Path, *, create: bool = False) -> ModelRegistry:
    return ModelRegistry(registry_dir, create=create, model_key=Settings.from_env().model_key)


@cli.group("models")
def models_group() -> None:
    """The model registry: immutable versions, aliases (champion, challenger, previous), history."""


@models_group.command("register")
@_REGISTRY
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--alias", help=f"Also point this alias at it (e.g. {', '.join(ALIASES[:2])}).")
@click.option("--why", default="", help="Why (kept in the history).")
@_JSON
def register_cmd(registry_dir: Path, model_dir: Path, alias: str | None, why: str, as_json: bool) -> None:
    """Copy MODEL_DIR into the registry as an immutable version, after verifying it loads."""
    vid = _open(registry_dir, create=True).register(model_dir, alias=alias, why=why)
    emit(as_json, {"version": vid, "alias": alias}, lambda: click.echo(vid))


@models_group.command("promote")
@_REGISTRY
@click.argument("ref")
@click.option("--alias", default="champion", show_default=True, help="The alias to move.")
@_WHY
@_JSON
def promote_cmd(registry_dir: Path, ref: str, alias: str, why: str, as_json: bool) -> None:
    """Point an alias at REF (a version id, a unique prefix or another alias)."""
    reg = _open(registry_dir)
    vid = reg.promote(ref, alias=alias, why=why)
    emit(as_json, {"alias": alias, "version": vid, "aliases": reg.aliases()}, lambda: click.echo(vid))


@models_group.command("rollback")
@_REGISTRY
@click.option("--alias", default="champion", show_default=True, help="The alias to move back.")
@_WHY
@_JSON
def rollback_cmd(registry_dir: Path, alias: str, why: str, as_json: bool) -> None:
    """Move an alias back to the previous version."""
    reg = _open(registry_dir)
    vid = reg.rollback(alias=alias, why=why)
    emit(as_json, {"alias": alias, "version": vid, "aliases": reg.aliases()}, lambda: click.echo(vid))


@models_group.command("list")
@_REGISTRY
@_JSON
def list_cmd(registry_dir: Path, as_json: bool) -> None:
    """Every version, its aliases and its headline metrics."""
    versions = _open(registry_dir).versions()

    def human() -> None:
        table = Table("version", "registered", "aliases", "family", "near-optimal")
        for v in versions:
            near = v.metrics.get("near_optimal_rate")
            table.add_row(
                v.id, v.registered_at, ",".join(v.aliases) or "-", v.family, f"{near:.2%}" if near else "-"
            )
        stdout.print(table)

    emit(
        as_json,
        {
            "versions": [
                {"id": v.id, "registered_at": v.registered_at, "aliases": list(v.aliases), "family": v.family}
                for v in versions
            ]
        },
        human,
    )


@models_group.command("show")
@_REGISTRY
@click.argument("ref", default="champion")
@_JSON
def show_cmd(registry_dir: Path, ref: str, as_json: bool) -> None:
    """One version (verified against its id) and the history of every alias move."""
    reg = _open(registry_dir)
    path = reg.path(ref)
    history = [m.to_dict() for m in reg.history()]
    doc = {"ref": ref, "version": path.name, "path": str(path), "aliases": reg.aliases(), "history": history}

    def human() -> None:
        click.echo(f"{ref}: version {path.name} (verified), {path}")
        table = Table("when", "alias", "from", "to", "why", "who")
        for m in history:
            table.add_row(m["at"], m["alias"], m["from"] or "-", m["to"] or "-", m["why"], m["who"])
        stdout.print(table)

    emit(as_json, doc, human)


@models_group.command("vectors")
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The model directory.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Check the directory's test_vectors.json against the model instead (exit 1 on a mismatch).",
)
@_JSON
def vectors_cmd(model_dir: Path, check: bool, as_json: bool) -> None:
    """Write the model's test_vectors.json: HTTP request bodies, the heuristic's and the service's answers
    (for clients in other languages to test against), or check it."""
    try:
        from ..serving.vectors import check_test_vectors, write_test_vectors
    except ImportError as exc:
        raise ConfigError(
            f"test vectors need the HTTP service's packages ({exc.name}): "
            "pip install 'dwcp-selector[serving]'"
        ) from exc
    key = Settings.from_env().model_key
    if check:
        mismatches = check_test_vectors(model_dir, key=key)

        def human_check() -> None:
            for m in mismatches:
                click.echo(f"mismatch: {m}")
            click.echo(f"{len(mismatches)} mismatches" if mismatches else "test vectors agree with the model")

        emit(as_json, {"model": str(model_dir), "mismatches": mismatches}, human_check)
        if mismatches:
            sys.exit(1)
        return
    path = write_test_vectors(model_dir, key=key)
    emit(as_json, {"model": str(model_dir), "vectors": str(path)}, lambda: click.echo(f"wrote {path}"))


@cli.command("serve")
@click.option(
    "--registry",
    "registry_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Follow an alias.",
)
@click.option("--alias", default="champion", show_default=True)
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback unless told otherwise.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes (more than one needs --registry: each follows the alias).",
)
@click.option(
    "--follow",
    "follow_s",
    type=click.FloatRange(0.1, 3600),
    default=2.0,
    show_default=True,
    help="With --registry: seconds between checks of the alias.",
)
def serve_cmd(
    registry_dir: Path | None,
    alias: str,
    model_dir: Path | None,
    host: str,
    port: int,
    workers: int,
    follow_s: float,
) -> None:
    """Serve decisions over HTTP (POST /v1/select); DWCP_RELOAD_TOKEN enables POST /v1/model:reload.

    With --registry the service follows the alias (a promotion or rollback reaches it within --follow
    seconds); with --workers N each worker process holds its own model and follows the alias on its own,
    so a token reload, which reaches one worker, reaches the others through the alias as well."""
    import os

    import uvicorn

    from ..serving.http import create_app

    if (registry_dir is None) == (model_dir is None):
        raise click.UsageError("give exactly one of --registry and --model")
    if workers > 1 and registry_dir is None:
        raise click.UsageError(
            "--workers needs --registry: with --model a reload would reach only the worker it lands on"
        )
    settings = Settings.from_env()
    if workers > 1:
        assert registry_dir is not None
        ModelRegistry(registry_dir, model_key=settings.model_key).path(alias)  # refuse a bad alias now
        os.environ.update(
            DWCP_SERVE_REGISTRY=str(registry_dir), DWCP_SERVE_ALIAS=alias, DWCP_SERVE_FOLLOW_S=str(follow_s)
        )
        os.environ.pop("DWCP_SERVE_MODEL", None)
        uvicorn.run(
            "dwcp_selector.serving.http:create_app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            access_log=False,
        )
        return
    registry = ModelRegistry(registry_dir, model_key=settings.model_key) if registry_dir is not None else None
    app = create_app(
        model_dir=model_dir,
        registry=registry,
        alias=alias,
        reload_token=os.environ.get("DWCP_RELOAD_TOKEN") or None,
        model_key=settings.model_key,
        follow_interval_s=follow_s,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
