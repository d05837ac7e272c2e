"""Outputs appear whole or not at all: failures and interrupts leave the previous output intact."""
import os
import signal
import subprocess
import sys
import time

import pytest

from scap_ov.errors import ScapError
from scap_ov.fsutil import atomic_output_dir


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_success_replaces_previous_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (out / "new.txt").exists()  # nothing visible before success
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt(), SystemExit(143)])
def test_failure_midway_keeps_previous_output(tmp_path, failure):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(type(failure)):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "half.bin").write_bytes(b"\0" * 1000)
            raise failure
    assert (out / "old.txt").read_text() == "old" and not (out / "half.bin").exists()
    assert _leftovers(tmp_path) == []


def test_refuses_a_file_where_the_folder_should_go(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(ScapError, match="exists and is not a folder"):
        with atomic_output_dir(tmp_path / "out"):
            pass


def _default_sigint():
    # A shell starts background jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt
    # handler: a CI runner that launches the suite with `&` would make the child deaf to SIGINT. Restore the
    # default disposition, as a terminal's Ctrl-C meets it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_real_export_leaves_previous_output_intact(tmp_path, sig):
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("previous run")
    proc = subprocess.Popen([sys.executable, "-m", "scap_ov.cli", "export", "--output", str(out), "--overwrite",
                             "--samples", "64"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TERM": "dumb"}, preexec_fn=_default_sigint)
    seen = ""
    deadline = time.time() + 300
    while "calibrating on" not in seen and time.time() < deadline:  # calibration is starting
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    assert "calibrating on" in seen, seen[-2000:]
    time.sleep(3)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]
    assert _leftovers(tmp_path) == []
