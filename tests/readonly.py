"""A folder nobody may write to, for tests of the commands' answers to read-only outputs."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` read-only for the duration; as root (who ignores permissions) make it immutable.

    Skips the test where neither works (root on a file system without ``chattr``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o500)
    immutable = False
    if os.access(folder, os.W_OK):
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                            capture_output=True).returncode != 0:
            os.chmod(folder, 0o700)
            pytest.skip("cannot make a folder read-only for this user")
        immutable = True
    try:
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        os.chmod(folder, 0o700)
