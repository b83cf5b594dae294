"""``lethe``: the command line over the unlearning engine (``engine_commands``), the
service commands (``service_commands``) and a remote server (``remote_commands``). Global options come before the subcommand:
``lethe --data-dir D train ...``; each also reads its ``LETHE_*`` variable.

Errors print ``error [code]: detail`` and exit with status 2; a failed ``verify`` exits 1.
"""
from __future__ import annotations

import click
import httpx

from app.cli import engine_commands, remote_commands, service_commands  # noqa: F401  (they register commands)
from app.cli.base import cli
from lethe.client import ApiError
from models_store import LetheError


def main(argv: list[str] | None = None) -> int:
    """Run ``lethe`` with ``argv``; the exit status (also for the tests, which call it in-process)."""
    try:
        cli.main(args=argv, prog_name="lethe", standalone_mode=False)
    except (LetheError, ApiError) as exc:
        click.echo(f"error [{exc.code}]: {exc.detail}", err=True)
        return 2
    except httpx.HTTPError as exc:  # the server (--url) did not answer
        try:
            where = f"{exc.request.url.copy_with(query=None)}: "  # no query: it may name an owner
        except RuntimeError:
            where = ""
        click.echo(f"error [server_unreachable]: {where}{exc}", err=True)
        return 2
    except click.UsageError as exc:  # a bad option or argument: the same form as every error
        command = exc.ctx.command_path.split(" ")[1:] if exc.ctx else []
        click.echo(f"error [invalid_argument]: {exc.format_message()} "
                   f"(see: {' '.join(['lethe', *command, '--help'])})", err=True)
        return 2
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        return 1
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except ValueError as exc:  # bad numbers the engine could not take
        click.echo(f"error [invalid_argument]: {exc}", err=True)
        return 2
    return 0
