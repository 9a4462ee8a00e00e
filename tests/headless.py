"""Headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it) for the report tests."""

import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--hide-scrollbars",
    # Time to run the page's script and decode its images before the DOM is dumped.
    "--virtual-time-budget=5000",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium package)")
    return found


def _run(args) -> str:
    run = subprocess.run([chromium(), *FLAGS, *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def dump_dom(page: Path, fragment: str = "") -> str:
    """The page's DOM after its scripts ran, as HTML."""
    return _run(["--dump-dom", page.absolute().as_uri() + fragment])


def screenshot(page: Path, out: Path, size=(1200, 2400)) -> Path:
    _run([f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", page.absolute().as_uri()])
    return out
