"""The public names of DESIGN.md's API contract resolve, and the CLI's help lists every command."""

import subprocess
import sys
from pathlib import Path

import headhunt_jax as hh

CONTRACT = [
    "load_backbone",
    "head_features",
    "saliency",
    "robust_saliency",
    "top_k_heads",
    "fit_scorer",
    "score",
    "smooth",
    "localize",
    "calibrate",
]


def test_public_names_resolve():
    assert set(CONTRACT) <= set(hh.__all__)
    for name in hh.__all__:
        assert callable(getattr(hh, name)), name


def test_dir_shows_the_public_names_and_nothing_else():
    hh.head_features  # noqa: B018  (loads submodules, which must not show either)
    assert dir(hh) == sorted(hh.__all__)


def test_cli_help_lists_every_command():
    script = Path(sys.executable).with_name("headhunt-jax")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("convert", "extract", "hunt", "fit", "detect", "evaluate", "demo"):
        assert command in out


def test_packaged_data_is_found_from_a_source_checkout(monkeypatch):
    """Python started at the checkout's root imports the source tree, where data/ and
    checkpoints/ sit beside the package rather than inside it (an install maps them in)."""
    import importlib.resources

    from headhunt_jax import resources

    def not_installed(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(importlib.resources, "files", not_installed)
    assert resources.package_dir("data") == root / "data"
    assert (resources.package_dir("data") / "prompts.json").is_file()
    assert any(resources.package_dir("checkpoints").glob("*.json"))
