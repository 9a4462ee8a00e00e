"""Integrity where the format has none: a detector bundle and a converted backbone record the size
and SHA-256 of each file they write (``sha256.json``, written last); loading checks them and names
a changed file. And the reading layer (``headhunt_jax.files``) that tells every damage in one line."""

import json
import re

import numpy as np
import pytest

import headhunt_jax as hh
from headhunt_jax import cli, files, tiny_checkpoints
from headhunt_jax.backbone import save_converted
from headhunt_jax.detector import Detector
from headhunt_jax.errors import InputError, UserError
from headhunt_jax.models.tokenizer import load_tokenizer

HEADS = np.array([[2, 1], [0, 2], [3, 0]])
PROMPTS = ["Identify any abnormal events.", "Analyze the video for anomalies."]


def changed(path):
    return re.escape(f"{path}: changed since it was written (sha256 mismatch)")


def flip(path, at=None):
    """One byte of ``path`` changed, its size kept."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def largest(folder):
    return max((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)


def listed(root):
    return set(json.loads((root / files.MANIFEST).read_text())["files"])


def on_disk(root):
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name != files.MANIFEST
    }


@pytest.fixture
def detector_dir(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3 * 8)).astype(np.float32)
    y = (np.arange(40) % 2).astype(int)
    x[y == 1, :8] += 1.0
    detector = Detector(HEADS, hh.fit_scorer(x, y), 1.0, 0.5, backbone="tiny", prompt="odd?")
    detector.save(tmp_path / "detector")
    return tmp_path / "detector"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny converted backbone (the demo's), written by save_converted."""
    out = tmp_path_factory.mktemp("integrity") / "backbone"
    return tiny_checkpoints.write("internvl3", out, PROMPTS, image_size=56)


@pytest.fixture
def backbone_dir(converted, tmp_path):
    import shutil

    return shutil.copytree(converted, tmp_path / "backbone")


# --- detector bundles -----------------------------------------------------------------------------


def test_a_detector_lists_every_file_and_names_a_changed_one(detector_dir):
    assert listed(detector_dir) == on_disk(detector_dir)
    assert Detector.load(detector_dir).tau == 0.5
    target = largest(detector_dir / "arrays" / "d")
    flip(target)
    with pytest.raises(InputError, match=changed(target)):
        Detector.load(detector_dir)


def test_a_changed_detector_is_one_line_in_the_cli(detector_dir, capsys):
    target = detector_dir / "meta" / "metadata"
    text = target.read_text()
    target.write_text(text.replace('"tau": 0.5', '"tau": 0.9'))  # still valid JSON, same size
    code = cli.main(["--no-compile-cache", "detect", "--detector", str(detector_dir), "x.mp4"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert line == (
        f"headhunt-jax detect: error: {target}: changed since it was written (sha256 mismatch)"
    )


def test_a_detector_saved_again_is_listed_again(detector_dir):
    detector = Detector.load(detector_dir)
    detector.save(detector_dir, overwrite=True)
    assert listed(detector_dir) == on_disk(detector_dir)
    assert Detector.load(detector_dir).prompt == "odd?"


def test_a_detector_without_manifest_loads_as_before(detector_dir):
    (detector_dir / files.MANIFEST).unlink()
    assert Detector.load(detector_dir).backbone == "tiny"


def test_a_missing_or_cut_file_is_named(detector_dir):
    target = detector_dir / "arrays" / "_sharding"
    data = target.read_bytes()
    target.write_bytes(data[:10])
    with pytest.raises(
        InputError, match=re.escape(f"{target}: changed since it was written (cut short")
    ):
        Detector.load(detector_dir)
    target.unlink()
    with pytest.raises(InputError, match=re.escape(f"{target}: missing (listed in")):
        Detector.load(detector_dir)


# --- converted backbones --------------------------------------------------------------------------


def test_a_converted_backbone_lists_its_files_and_names_a_changed_one(backbone_dir):
    # the demo's tiny writer lists its tokenizer.json too
    assert listed(backbone_dir) == on_disk(backbone_dir)
    hh.load_backbone(backbone_dir)
    target = largest(backbone_dir / "params" / "d")
    flip(target)
    with pytest.raises(InputError, match=changed(target)):
        hh.load_backbone(backbone_dir)


def test_a_valid_but_changed_config_is_told(backbone_dir):
    """What no parser can see: a number changed in valid JSON."""
    target = backbone_dir / "headhunt_backbone.json"
    text = target.read_text()
    target.write_text(
        re.sub(r'"num_heads": (\d)', lambda m: f'"num_heads": {int(m[1]) % 9 + 1}', text, count=1)
    )
    with pytest.raises(InputError, match=changed(target)):
        hh.load_backbone(backbone_dir)


def test_a_converted_backbone_without_manifest_loads_as_before(backbone_dir):
    (backbone_dir / files.MANIFEST).unlink()
    assert hh.load_backbone(backbone_dir).num_layers > 0


def test_converting_again_lists_the_new_files(backbone_dir):
    bb = hh.load_backbone(backbone_dir)
    save_converted(bb, backbone_dir)  # into its own folder: now with its tokenizer
    assert listed(backbone_dir) == on_disk(backbone_dir)
    hh.load_backbone(backbone_dir)


def test_large_files_are_hashed_when_their_restore_fails(backbone_dir, monkeypatch):
    """Files over HASH_ALWAYS_BYTES have only their size checked up front; when orbax fails on
    them they are hashed, and the changed one is named."""
    monkeypatch.setattr(files, "HASH_ALWAYS_BYTES", 0)
    monkeypatch.delenv(files.VERIFY_ENV, raising=False)
    target = largest(backbone_dir / "params" / "d")
    flip(target)
    with pytest.raises(InputError, match=changed(target)):
        hh.load_backbone(backbone_dir)


def test_a_file_orbax_does_not_read_is_checked_on_request(backbone_dir, monkeypatch):
    """A changed file that the load does not need goes unseen without the full check
    (HEADHUNT_VERIFY=full hashes every file)."""
    monkeypatch.setattr(files, "HASH_ALWAYS_BYTES", 0)
    target = backbone_dir / "params" / "commit_success.txt"
    flip(target, at=0)
    monkeypatch.delenv(files.VERIFY_ENV, raising=False)
    hh.load_backbone(backbone_dir)
    monkeypatch.setenv(files.VERIFY_ENV, "full")
    with pytest.raises(InputError, match=changed(target)):
        hh.load_backbone(backbone_dir)


def test_an_orbax_failure_on_intact_files_stays_a_bug(backbone_dir, monkeypatch):
    """With every byte as written, an exception from orbax is not the files' fault: raised as
    it is. Without a manifest nothing says so: told as a damaged checkpoint, in one line."""
    import orbax.checkpoint as ocp

    def restore(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(ocp.StandardCheckpointer, "restore", restore)
    with pytest.raises(RuntimeError, match="boom"):
        hh.load_backbone(backbone_dir)
    (backbone_dir / files.MANIFEST).unlink()
    where = backbone_dir.absolute() / "params"
    message = f"{where}: orbax checkpoint incomplete or damaged (RuntimeError: boom)"
    with pytest.raises(InputError, match=re.escape(message) + "$"):
        hh.load_backbone(backbone_dir)


# --- the reading layer ----------------------------------------------------------------------------


def test_text_and_json_damage_is_told_with_the_file(tmp_path):
    f = tmp_path / "x.json"
    f.write_bytes(b'{"a": "\xc3\x28"}')
    with pytest.raises(
        InputError, match=re.escape(f"{f}: not UTF-8 text (byte 7) (expected a thing)")
    ):
        files.read_json(f, "a thing")
    f.write_text('{"a": [1, 2')
    with pytest.raises(
        InputError, match=re.escape(f"{f}: cut short (its JSON stops at line 1 column 12)")
    ):
        files.read_json(f)
    f.write_text('{"a": 1,, "b": 2}')
    with pytest.raises(InputError, match=re.escape(f"{f}: not valid JSON (line 1 column 9")):
        files.read_json(f)
    f.write_text("[1, 2]")
    with pytest.raises(InputError, match=re.escape(f"{f}: not a JSON object (a JSON list)")):
        files.read_json(f)
    assert files.read_json(f, kind=list) == [1, 2]
    f.write_text("   \n")
    with pytest.raises(InputError, match=re.escape(f"{f}: empty")):
        files.read_json(f)
    f.write_bytes(b"ab\x00cd")
    with pytest.raises(InputError, match=re.escape(f"{f}: not text (a NUL byte at byte 2)")):
        files.read_text(f)
    missing = tmp_path / "none.json"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing}: no such file")) as e:
        files.read_json(missing)
    assert isinstance(e.value, UserError)


def test_lines_split_as_open_splits_them(tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes(b"\xef\xbb\xbfa b\r\nc\rd\n\ne\x0cf\n")
    assert files.read_lines(f) == ["a b", "c", "d", "", "e\x0cf"]
    f.write_bytes(b"")
    assert files.read_lines(f) == []


def test_an_unreadable_tokenizer_is_a_user_error_naming_it(tmp_path):
    f = tmp_path / "tokenizer.json"
    f.write_text('{"version": "1.0", "model": {"type": "Nothing"}}')
    with pytest.raises(InputError, match=re.escape(f"{f}: not a readable tokenizer")):
        load_tokenizer(tmp_path)
    f.write_bytes(b'{"version": "1.0", "mod')
    with pytest.raises(InputError, match=re.escape(f"{f}: not a readable tokenizer (cut short")):
        load_tokenizer(f)
    f.write_bytes(b"\xff\xfe")
    with pytest.raises(InputError, match=re.escape(f"{f}: not UTF-8 text (byte 0)")):
        load_tokenizer(f)


def test_a_damaged_store_description_is_one_store_error(tmp_path):
    from headhunt_jax.store import FeatureStore, StoreError

    (tmp_path / "store.json").write_bytes(b'{"backbone": "\xff"}')
    with pytest.raises(
        StoreError, match=re.escape(f"{tmp_path / 'store.json'}: not UTF-8 text (byte 14)")
    ):
        FeatureStore(tmp_path)


def test_a_manifest_of_a_relative_folder(tmp_path, monkeypatch):
    from headhunt_jax import files

    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "out" / "sub" / "a.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    manifest = json.loads(files.write_manifest("out").read_text())
    assert list(manifest["files"]) == ["sub/a.json"]
