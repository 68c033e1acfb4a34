"""One writer per run folder: a second is refused at once, naming the first; a dead holder's lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from transferkit.errors import RunDirError
from transferkit.runs.folder import check_output_dir, next_free_dir
from transferkit.runs.lock import LOCK_FILE, run_folder_lock

HOLD = ("import sys, time; from transferkit.runs.lock import run_folder_lock\n"
        "with run_folder_lock(sys.argv[1], 'transferkit train'):\n"
        "    print('locked', flush=True); time.sleep(60)\n")


def _holder(run_dir):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_second_writer_is_refused_naming_the_first(tmp_path):
    process = _holder(tmp_path / "run")
    try:
        started = time.perf_counter()
        with pytest.raises(RunDirError, match=rf"in use by process {process.pid} on .*transferkit train"):
            with run_folder_lock(tmp_path / "run", "transferkit export"):
                pass
        assert time.perf_counter() - started < 2, "refused at once, not after waiting"
    finally:
        process.kill()
        process.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    process = _holder(tmp_path / "run")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (tmp_path / "run" / LOCK_FILE).exists()  # left behind, but stale
    with run_folder_lock(tmp_path / "run", "transferkit train --resume"):
        assert f'"pid": {os.getpid()}' in (tmp_path / "run" / LOCK_FILE).read_text()


def test_lock_file_alone_does_not_make_a_folder_taken(tmp_path):
    with run_folder_lock(tmp_path / "run", "test"):
        pass
    assert check_output_dir(tmp_path / "run", overwrite=False) == tmp_path / "run"
    assert next_free_dir(tmp_path / "run") == tmp_path / "run"


def test_failed_start_leaves_no_folder(tmp_path):
    with pytest.raises(ValueError):
        with run_folder_lock(tmp_path / "run", "test"):
            raise ValueError("bad data")
    assert not (tmp_path / "run").exists()


def test_an_existing_folder_is_kept_after_a_failure(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError):
        with run_folder_lock(tmp_path / "run", "test"):
            raise ValueError("bad data")
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
