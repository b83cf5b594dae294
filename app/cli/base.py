"""The CLI's group and its global options; every command gets a :class:`Context`."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from app.engine import build_engine
from app.settings import Settings


@dataclass
class Context:
    settings: Settings
    as_json: bool
    quiet: bool

    def engine(self):
        progress = None if self.quiet else (lambda m, state=None: m and print(f"  {m}", file=sys.stderr, flush=True))
        return build_engine(self.settings, progress=progress)

    def print(self, obj, text: str) -> None:
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
