"""The CLI's progress: bars per shard on a terminal, plain lines elsewhere."""
from __future__ import annotations

import io

from rich.console import Console

from app.cli.progress import ShardBars, for_terminal, plain


def state(shard, epoch, done, total=1200):
    return {"phase": "training", "shard": shard, "slice": 0, "slices": 2, "epoch": epoch, "epochs": 3,
            "samples_done": done, "samples_total": total, "samples_per_s": 2345.6, "eta_s": 1.0}


def test_bars_show_each_training_shard_with_its_rate():
    out = io.StringIO()
    bars = ShardBars(Console(file=out, force_terminal=True, width=120))
    bars("training shard 0 from slice 0", None)
    bars(None, state(0, 1, 400))
    bars(None, state(1, 1, 400))
    bars(None, state(0, 3, 1200))
    bars(None, {"phase": "done"})  # not a training state: nothing to draw
    bars.stop()
    text = out.getvalue()
    assert "training shard 0 from slice 0" in text
    assert "shard 0 slice 1/2 epoch 3/3" in text and "shard 1 slice 1/2 epoch 1/3" in text
    assert "2,346 samples/s" in text and "100%" in text
    assert sorted(bars.tasks) == [0, 1]


def test_off_a_terminal_progress_is_plain_lines(capsys):
    plain("importing 10 samples", None)
    plain(None, state(0, 1, 400))  # epoch states are not printed line by line
    assert capsys.readouterr().err == "  importing 10 samples\n"
    progress, done = for_terminal(quiet=False)  # pytest's stderr is not a terminal
    assert progress is plain
    assert for_terminal(quiet=True)[0] is None
