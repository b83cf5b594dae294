"""``lethe worker``'s supervisor (``_supervise``), run for real as a process on a tiny
child command: it restarts the child with back-off, stops promptly on SIGTERM/SIGINT
(during the back-off too), passes them on to a running child, and reaps orphans."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals; prctl for the orphan test")

ROOT = Path(__file__).resolve().parents[2]

# The supervisor under test, in a process of its own so that the signals are real.
SUPERVISOR = """
import json, os, sys
opts = json.loads(sys.argv[1])
if opts["subreaper"]:  # stands in for PID 1: orphaned grandchildren are re-parented to it
    import ctypes
    assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
from app.cli.service_commands import _supervise
code = _supervise([sys.executable, "-c", opts["child"]], backoff=opts["backoff"], max_backoff=opts["backoff"])
sys.stderr.flush()
os._exit(code)  # skip the interpreter's teardown (seconds, with the app imported): not what is timed
"""

# The child logs each start (with its pid) to LOG; what follows decides how it ends.
LOGS_START = "import os, signal, sys, time\nLOG = {log!r}\n" \
             "def log(line):\n    with open(LOG, 'a') as f:\n        f.write(line + '\\n')\n"
EXITS_3 = "log(f'start {os.getpid()}')\nsys.exit(3)\n"
TRAPS_AND_WAITS = """
def trap(signum, _frame):
    log(f'got {signum}')
    sys.exit(7)
signal.signal(signal.SIGTERM, trap)
signal.signal(signal.SIGINT, trap)
log(f'start {os.getpid()}')
while True:
    time.sleep(60)
"""
JUST_WAITS = "log(f'start {os.getpid()}')\nwhile True:\n    time.sleep(60)\n"
# Leaves an orphan behind (an intermediate process forks it and exits), which exits soon
# after: a zombie of whoever it was re-parented to, unless that one reaps it.
LEAVES_AN_ORPHAN = """
middle = os.fork()
if middle == 0:
    orphan = os.fork()
    if orphan == 0:
        time.sleep(0.3)
        os._exit(0)
    log(f'orphan {orphan}')
    os._exit(0)
os.waitpid(middle, 0)
""" + TRAPS_AND_WAITS


@pytest.fixture
def supervise(tmp_path):
    """Start the supervisor on a child program; kill whatever is left afterwards."""
    started: list[subprocess.Popen] = []
    log, err = tmp_path / "child.log", tmp_path / "supervisor.err"

    def start(child: str, backoff: float, subreaper: bool = False) -> subprocess.Popen:
        opts = {"child": LOGS_START.format(log=str(log)) + child, "backoff": backoff, "subreaper": subreaper}
        proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, json.dumps(opts)], cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err.open("w"))
        started.append(proc)
        return proc

    start.log, start.err = log, err
    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for line in lines(log):  # a child left behind by a supervisor that did not stop it
        if line.startswith("start "):
            try:
                os.kill(int(line.split()[1]), signal.SIGKILL)
            except ProcessLookupError:
                pass


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def starts(path: Path) -> list[str]:
    return [line for line in lines(path) if line.startswith("start ")]


def wait_for(predicate, timeout: float = 60.0, what: str = "") -> None:
    """Poll ``predicate`` until true (60 s: the first start imports the app)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stops_within(proc: subprocess.Popen, seconds: float) -> int:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the supervisor did not stop within {seconds} s")


def test_a_child_that_exits_is_started_again(supervise):
    proc = supervise(EXITS_3, backoff=0.05)
    wait_for(lambda: len(starts(supervise.log)) >= 3, what="three starts")
    assert len({line.split()[1] for line in starts(supervise.log)}) >= 3  # new processes
    assert "the worker exited (3); starting it again in 0.05 s" in supervise.err.read_text()
    proc.send_signal(signal.SIGTERM)
    stops_within(proc, 2)
    count = len(starts(supervise.log))
    time.sleep(0.3)
    assert len(starts(supervise.log)) == count  # nothing started after the stop


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_back_off_stops_it_at_once(supervise, signum):
    proc = supervise(EXITS_3, backoff=30)
    wait_for(lambda: "starting it again in 30 s" in supervise.err.read_text(), what="the back-off")
    time.sleep(0.1)  # asleep in the back-off by now
    proc.send_signal(signum)
    assert stops_within(proc, 2) == 0
    assert len(starts(supervise.log)) == 1  # not started again


@pytest.mark.parametrize("signum, child, status, logged", [
    (signal.SIGTERM, TRAPS_AND_WAITS, 7, ["got 15"]),  # the child's own exit status
    (signal.SIGINT, JUST_WAITS, 128 + signal.SIGINT, []),  # killed by it: 128 + its number
], ids=["SIGTERM-trapped", "SIGINT-kills"])
def test_a_signal_is_passed_on_to_the_running_child_and_the_supervisor_exits(supervise, signum, child, status,
                                                                             logged):
    proc = supervise(child, backoff=0.05)
    wait_for(lambda: starts(supervise.log), what="the child")
    proc.send_signal(signum)
    assert stops_within(proc, 2) == status
    assert lines(supervise.log)[1:] == logged
    time.sleep(0.3)
    assert len(starts(supervise.log)) == 1  # not started again


def test_orphans_are_reaped_and_the_childs_status_is_kept(supervise):
    proc = supervise(LEAVES_AN_ORPHAN, backoff=0.05, subreaper=True)
    wait_for(lambda: starts(supervise.log), what="the child")
    orphan = int(next(line for line in lines(supervise.log) if line.startswith("orphan ")).split()[1])

    # It exits after 0.3 s; a zombie keeps its /proc entry until its parent reaps it.
    wait_for(lambda: not Path(f"/proc/{orphan}").exists(), timeout=5, what=f"the orphan {orphan} reaped")
    assert proc.poll() is None and len(starts(supervise.log)) == 1  # its own child still runs
    proc.send_signal(signal.SIGTERM)
    assert stops_within(proc, 2) == 7
