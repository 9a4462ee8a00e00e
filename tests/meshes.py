"""The tests that need a mesh of 8 devices: each file runs its ``on_mesh`` tests again in a
subprocess with 8 simulated CPU devices (``run_on_8_devices``)."""

import os
import subprocess
import sys


def run_on_8_devices(test_file: str) -> None:
    """Runs ``test_file``'s ``on_mesh`` tests on 8 simulated devices; fails with their output
    when one fails or skips."""
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "on_mesh"]
    run = subprocess.run(
        [*cmd, test_file], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert run.returncode == 0 and "skipped" not in run.stdout, run.stdout[-6000:] + run.stderr
