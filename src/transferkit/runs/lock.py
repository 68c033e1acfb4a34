"""One writer per run folder: an advisory lock held while train, resume or export write into it.

The lock is `fcntl.flock` on `RUN/.lock`, so the kernel releases it when the holder
dies, however it dies (`kill -9` included): a lock file left by a dead process is
stale by construction and simply taken over. The file records who holds it, so a
refused second writer is told which process to wait for or stop.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from transferkit.errors import RunDirError

LOCK_FILE = ".lock"


def _holder(lock_path: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(lock_path.read_text(encoding="utf-8") or "{}")
    return {}


@contextlib.contextmanager
def run_folder_lock(run_dir: str | os.PathLike, purpose: str) -> Iterator[Path]:
    """Hold the run folder's lock (creating the folder) for the `with` block, or refuse at once."""
    import fcntl

    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir / LOCK_FILE
    handle = open(lock_path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(lock_path)
            who = (f"process {holder.get('pid', '?')} on {holder.get('host', '?')} "
                   f"({holder.get('purpose', 'a transferkit command')}, since {holder.get('since', '?')})")
            raise RunDirError(
                f"Run folder '{run_dir}' is in use by {who}. Wait for it to finish, stop it, or pass another --out."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
            "command": " ".join(sys.argv[:3]), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }))
        handle.flush()
        try:
            yield run_dir
        except BaseException:
            if created and not (run_dir / "checkpoint" / "state.json").exists():
                shutil.rmtree(run_dir, ignore_errors=True)  # a failed start (no epoch to resume) leaves nothing
            raise
    finally:
        handle.close()  # closing releases the lock; the file stays, harmlessly, for the next writer
