"""The CLI's progress: a bar per shard while it trains (rich), above them the engine's
progress lines; plain lines when stderr is not a terminal."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn


def plain(msg: str | None, state: dict | None = None) -> None:
    """One line per progress message; epoch states are left out (they come every epoch)."""
    if msg:
        print(f"  {msg}", file=sys.stderr, flush=True)


class ShardBars:
    """``progress(msg, state)`` for the engine: a bar per shard (its slices' samples done
    of all it will train, samples/s, time left), started on the first state."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.bars: Progress | None = None
        self.tasks: dict[int, int] = {}

    def __call__(self, msg: str | None, state: dict | None = None) -> None:
        if msg:
            self.console.print(f"  {msg}", highlight=False)
        if not state or state.get("phase") != "training":
            return
        if self.bars is None:
            self.bars = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.fields[rate]:>9} samples/s"), TimeRemainingColumn(),
                                 console=self.console, transient=False)
            self.bars.start()
        shard = state["shard"]
        description = (f"shard {shard} slice {state['slice'] + 1}/{state['slices']} "
                       f"epoch {state['epoch']}/{state['epochs']}")
        if shard not in self.tasks:
            self.tasks[shard] = self.bars.add_task(description, total=state["samples_total"], rate="")
        self.bars.update(self.tasks[shard], description=description, completed=state["samples_done"],
                         rate=f"{state['samples_per_s']:,.0f}")

    def stop(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None


def for_terminal(quiet: bool):
    """The progress callback for this process's stderr, and what to call when done."""
    if quiet:
        return None, lambda: None
    if not sys.stderr.isatty():
        return plain, lambda: None
    bars = ShardBars()
    return bars, bars.stop


def follow(events, progress) -> str:
    """Feed a remote job's Server-Sent Events (``lethe.client.JobEvent``) to ``progress``
    as the engine would: its progress line when it changes, each training shard's state.
    The job's last status."""
    line, status = None, "unknown"
    for event in events:
        if event.event == "end":
            return event.data.get("status", status)
        doc = event.data
        status = doc.get("status", status)
        if progress is None:
            continue
        if doc.get("progress") and doc["progress"] != line:
            line = doc["progress"]
            progress(line)
        for shard in doc.get("shards", []):
            if shard.get("phase") == "training":
                progress(None, shard)
    return status
