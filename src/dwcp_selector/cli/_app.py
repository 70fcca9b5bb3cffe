"""The command group, its error handling and the output helpers every command uses.

Every failure the user can cause (a missing file, a corrupt frame, a wrong baseline, a bad option value)
ends as one ``error: ...`` line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from .._version import __version__
from ..errors import DwcpError

__all__ = ["cli", "emit", "main", "stderr", "stdout"]

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)

EXIT_ERROR = 2
EXIT_UNEXPECTED = 3


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DwcpError as exc:
            _fail(f"{exc}")
        except FileNotFoundError as exc:
            _fail(f"no such file: {exc.filename}")
        except PermissionError as exc:
            _fail(f"permission denied: {exc.filename}")
        except IsADirectoryError as exc:
            _fail(f"is a directory: {exc.filename}")
        except FileExistsError as exc:
            # mkdir(exist_ok=True) says "exists" of a file where it needed a directory
            if exc.filename and os.path.lexists(exc.filename) and not os.path.isdir(exc.filename):
                _fail(f"not a directory: {exc.filename}")
            _fail(f"already exists: {exc.filename}")
        except OSError as exc:
            _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        except KeyboardInterrupt:
            _fail("interrupted", code=130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the last resort: a bug, but still one line, no traceback
            if os.environ.get("DWCP_DEBUG"):
                raise
            _fail(
                f"unexpected {type(exc).__name__}: {exc} (a bug: please report it; DWCP_DEBUG=1 shows where)",
                code=EXIT_UNEXPECTED,
            )


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    """One ``error:`` line, whatever the message holds (libpq's, for one, spans lines)."""
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def emit(as_json: bool, document: dict[str, Any], human: Callable[[], None]) -> None:
    """Print ``document`` as JSON, or call ``human`` to print the summary a person reads."""
    if as_json:
        click.echo(json.dumps(document, indent=2, sort_keys=False))
    else:
        human()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dwcp-selector")
def cli() -> None:
    """Pick, per transfer, how to encode data before AMST sends it: none, lz4, zstd or HDE delta."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: click's own usage errors are reported as one ``error:`` line like every other, the
    usage hint on that line instead of click's several-line usage block."""
    try:
        code = cli.main(args=argv, prog_name="dwcp-selector", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        # a group without its command: the help (the commands) on stdout, the error on stderr
        click.echo(exc.ctx.get_help())
        group = exc.ctx.command
        names = group.list_commands(exc.ctx) if isinstance(group, click.Group) else []
        _fail(f"missing command: one of {', '.join(names)}", code=EXIT_ERROR)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        _fail(exc.format_message() + hint, code=exc.exit_code or EXIT_ERROR)
    except click.ClickException as exc:
        _fail(exc.format_message(), code=exc.exit_code if exc.exit_code else EXIT_ERROR)
    except click.exceptions.Abort:
        _fail("aborted", code=130)
    sys.exit(code if isinstance(code, int) else 0)
