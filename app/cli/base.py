"""The CLI's group and its global options; every command gets a :class:`Context`."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import click

from app.settings import Settings


@dataclass
class Context:
    settings: Settings
    as_json: bool
    quiet: bool
    stop_progress: Callable[[], None] = field(default=lambda: None, repr=False)
    url: str | None = None  # a remote server (--url, LETHE_URL): train and unlearn go there
    key: str | None = field(default=None, repr=False)

    def client(self):
        """The API client for --url (default http://127.0.0.1:8000) and --key. Without --key
        and --url, the admin key ``lethe serve`` stored in this data directory, if there is
        one: never sent to a server named by --url."""
        from lethe.client import Client

        key = self.key
        stored = self.settings.data_dir / "api-keys.json"
        if key is None and self.url is None and stored.exists():
            key = json.loads(stored.read_text()).get("admin")
        return Client(self.url or DEFAULT_URL, key, timeout=60)

    def progress(self):
        """The progress callback for this process's stderr (bars on a terminal), closed
        with the command."""
        from app.cli.progress import for_terminal

        progress, done = for_terminal(self.quiet)
        click.get_current_context().call_on_close(done)
        self.stop_progress = done
        return progress

    def engine(self):
        """The engine, reporting progress to stderr: a bar per training shard on a terminal."""
        from app.engine import build_engine  # torch: imported by the commands that use it only

        return build_engine(self.settings, progress=self.progress())

    def print(self, obj, text: str) -> None:
        self.stop_progress()  # the bars end before the result is printed
        click.echo(json.dumps(obj, indent=1, default=str) if self.as_json else text)


pass_ctx = click.make_pass_decorator(Context)


class LazyChoice(click.Choice):
    """A choice among the names ``names()`` returns (a registry of architectures,
    methods, ...), asked for when the option is used or its help shown, not when the CLI
    starts: those registries import torch, which a command such as ``lethe import``
    never needs (an idle process with torch holds 276 MiB more)."""

    def __init__(self, names: Callable[[], Sequence[str]], case_sensitive: bool = True):
        self._names, self._choices = names, None
        super().__init__((), case_sensitive)

    @property
    def choices(self) -> tuple[str, ...]:
        if self._choices is None:
            self._choices = tuple(self._names())
        return self._choices

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ sets it: the names come later
        if value:
            self._choices = tuple(value)


DEFAULT_URL = "http://127.0.0.1:8000"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", envvar="LETHE_DATA_DIR", default="lethe-data", show_default=True,
              type=click.Path(path_type=Path), help="datasets and model store root (env LETHE_DATA_DIR)")
@click.option("--store", envvar="LETHE_STORE_URL", default=None,
              help="model store path or fsspec URL (env LETHE_STORE_URL, default <data-dir>/models_store)")
@click.option("--device", envvar="LETHE_DEVICE", default=None,
              help="torch device (env LETHE_DEVICE, default: cuda if present, else cpu)")
@click.option("--json", "as_json", is_flag=True, help="print results as JSON")
@click.option("--quiet", is_flag=True, help="no progress lines")
@click.option("--url", envvar="LETHE_URL", default=None,
              help="a Lethe server (env LETHE_URL): train and unlearn run there, and delete, status, watch and "
                   "certificate get ask it (default for those: http://127.0.0.1:8000)")
@click.option("--key", envvar="LETHE_API_KEY", default=None,
              help="the API key for --url (env LETHE_API_KEY; default: the admin key `lethe serve` stored)")
@click.pass_context
def cli(ctx, data_dir: Path, store: str | None, device: str | None, as_json: bool, quiet: bool, url: str | None,
        key: str | None):
    """Lethe: machine unlearning for owner-keyed data."""
    # The rest of the settings (database, broker, keys, ...) come from LETHE_* variables.
    settings = Settings(data_dir=data_dir.resolve(), store_url=store, device=device)
    ctx.obj = Context(settings, as_json, quiet, url=url, key=key)
