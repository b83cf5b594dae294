"""The CLI's group and its global options; every command gets a :class:`Context`."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click

from app.engine import build_engine
from app.settings import Settings


@dataclass
class Context:
    settings: Settings
    as_json: bool
    quiet: bool
    stop_progress: Callable[[], None] = field(default=lambda: None, repr=False)

    def engine(self):
        """The engine, reporting progress to stderr: a bar per training shard on a terminal."""
        from app.cli.progress import for_terminal

        progress, done = for_terminal(self.quiet)
        click.get_current_context().call_on_close(done)
        self.stop_progress = done
        return build_engine(self.settings, progress=progress)

    def print(self, obj, text: str) -> None:
        self.stop_progress()  # the bars end before the result is printed
        click.echo(json.dumps(obj, indent=1, default=str) if self.as_json else text)


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", envvar="LETHE_DATA_DIR", default="lethe-data", show_default=True,
              type=click.Path(path_type=Path), help="datasets and model store root (env LETHE_DATA_DIR)")
@click.option("--store", envvar="LETHE_STORE_URL", default=None,
              help="model store path or fsspec URL (env LETHE_STORE_URL, default <data-dir>/models_store)")
@click.option("--device", envvar="LETHE_DEVICE", default=None,
              help="torch device (env LETHE_DEVICE, default: cuda if present, else cpu)")
@click.option("--json", "as_json", is_flag=True, help="print results as JSON")
@click.option("--quiet", is_flag=True, help="no progress lines")
@click.pass_context
def cli(ctx, data_dir: Path, store: str | None, device: str | None, as_json: bool, quiet: bool):
    """Lethe: machine unlearning for owner-keyed data."""
    # The rest of the settings (database, broker, keys, ...) come from LETHE_* variables.
    settings = Settings(data_dir=data_dir.resolve(), store_url=store, device=device)
    ctx.obj = Context(settings, as_json, quiet)
