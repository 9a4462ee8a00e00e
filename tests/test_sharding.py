"""Sharded backbones: the rules, meshes, and features equal to one device's.

The ``test_on_mesh_*`` tests need 8 devices. ``test_on_8_simulated_devices`` reruns them in a
subprocess with 8 simulated CPU devices, since the device count is fixed when JAX starts its
backend; to run them directly:
``XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu pytest tests/test_sharding.py``.
Error measure: max |sharded - one device| / max |one device| (float32); the same inputs on one
device already differ by ~3e-6 between a batch of 3 and one sample at a time.
"""

import os

import flax
import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec
from meshes import run_on_8_devices
from numerics import rel_err

import headhunt_jax as hh
from headhunt_jax import backbone, features, sharding, tiny_checkpoints
from headhunt_jax.features import head_features_prompts

hf = pytest.importorskip("hf_reference")

TOL = 1e-5
EIGHT_DEVICES = "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", "")
on_mesh = pytest.mark.skipif(
    not EIGHT_DEVICES, reason="needs 8 devices: run by test_on_8_simulated_devices"
)


@pytest.mark.skipif(EIGHT_DEVICES, reason="already on 8 devices")
def test_on_8_simulated_devices():
    run_on_8_devices(__file__)


# --- rules (no devices needed) ------------------------------------------------------------------


def test_partition_spec_per_shape():
    sizes = {"data": 2, "model": 8}
    spec = sharding.partition_spec
    assert spec(("embed", "heads", "head_dim"), (64, 16, 8), sizes) == PartitionSpec(
        None, "model", None
    )
    # 4 kv heads on model=8: the matrix falls back to its embedding axis
    assert spec(("embed", "kv_heads", "head_dim"), (64, 4, 8), sizes) == PartitionSpec(
        "model", None, None
    )
    assert spec(("kv_heads", "head_dim"), (4, 8), sizes) == PartitionSpec(None, None)
    assert spec(("vocab", "embed"), (151674, 64), sizes) == PartitionSpec(None, "model")
    assert spec(("embed",), (64,), sizes) == PartitionSpec(None)
    assert spec(("mlp",), (96,), sizes) == PartitionSpec("model")
    # a mesh axis splits one dimension at most, the first rule wins
    assert spec(("vision_mlp", "mlp"), (64, 64), sizes) == PartitionSpec(None, "model")
    assert spec(("embed", "vocab"), (64, 300), {"model": 1}) == PartitionSpec(None, "model")
    with pytest.raises(ValueError, match=r"logical axes \['length'\] have no sharding rule"):
        spec(("length", "embed"), (3, 64), sizes)


@pytest.fixture(scope="module")
def internvl3_8b_params():
    model = backbone.make_model(backbone.preset("InternVL3-8B"), "bfloat16")
    return backbone.abstract_params(model, boxed=True)


@pytest.mark.parametrize("model_size", [2, 8, 16])
def test_internvl3_8b_nothing_large_replicated(internvl3_8b_params, model_size):
    """28 heads, 4 kv heads and an odd vocabulary: every large weight is still split over
    'model'; what stays whole is vectors (norm scales, biases; a stacked one per layer)."""
    mesh = AbstractMesh((1, model_size), sharding.AXES, axis_types=(AxisType.Auto,) * 2)
    shardings = sharding.param_shardings(internvl3_8b_params, mesh)
    shapes = flax.traverse_util.flatten_dict(flax.linen.meta.unbox(internvl3_8b_params))
    total = per_device = 0
    for key, where in flax.traverse_util.flatten_dict(shardings).items():
        shape = shapes[key].shape
        one = shape[1:] if "layers" in key else shape  # one layer's, of a stacked parameter
        assert "model" in where.spec or np.prod(one) <= 4096, (key, shape, where.spec)
        total += np.prod(shape)
        per_device += np.prod(where.shard_shape(shape))
    assert per_device <= 1.002 * total / model_size  # within 0.2% of an even split


def test_param_shardings_needs_boxed_params():
    model = backbone.make_model(backbone.config_from_hf(hf.tiny_text_config().to_dict()))
    mesh = AbstractMesh((1, 1), sharding.AXES, axis_types=(AxisType.Auto,) * 2)
    with pytest.raises(TypeError, match="logical axis names"):
        sharding.param_shardings(backbone.abstract_params(model), mesh)


@pytest.mark.skipif(EIGHT_DEVICES, reason="one device")
def test_make_mesh_one_device():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data", "model") and mesh.devices.shape == (1, 1)
    assert sharding.make_mesh(data=1, model=-1).devices.shape == (1, 1)
    with pytest.raises(ValueError, match="data=2 x model=1 needs 2 devices, got 1"):
        sharding.make_mesh(data=2)
    with pytest.raises(ValueError, match="one of them may be -1"):
        sharding.make_mesh(data=-1, model=-1)
    with pytest.raises(ValueError, match="must be positive"):
        sharding.make_mesh(data=0)


# --- on 8 devices -----------------------------------------------------------------------------


def _internvl(tmp_path_factory, name, **text):
    model = hf.build(hf.tiny_internvl_config(text=hf.tiny_text_config(**text).to_dict()), seed=1)
    return hf.save(model, tmp_path_factory.mktemp(name) / "ckpt")


@pytest.fixture(scope="module")
def divisible(tmp_path_factory):
    """8 heads, 4 kv heads, mlp 96, vocab 300; vision: 4 heads, mlp 64, projector 128: all
    divide model=2 and 4."""
    return _internvl(tmp_path_factory, "divisible", num_attention_heads=8, num_key_value_heads=4)


@pytest.fixture(scope="module")
def indivisible(tmp_path_factory):
    """2 kv heads and vocab 302 on model=4: both fall back to the embedding axis."""
    return _internvl(tmp_path_factory, "indivisible", vocab_size=302)


@pytest.fixture(scope="module")
def batch(rng):
    """3 samples of 2 images each: padded to the data axis (8, 4 or 2)."""
    ids, n = hf.multimodal_ids(rng, batch=3, images_per_sample=2, tokens_per_image=4)
    return ids, rng.standard_normal((n, 3, 56, 56)).astype(np.float32)


def _param(bb, path):
    return flax.traverse_util.flatten_dict(bb.params)[tuple(path.split("/"))]


def _shard_shape(array):
    shapes = {s.data.shape for s in array.addressable_shards}
    assert len(shapes) == 1 and len(array.addressable_shards) == 8
    return shapes.pop()


def _placed_by_rules(bb):
    want = backbone._param_shardings(bb.model, bb.mesh)
    return all(jax.tree.leaves(jax.tree.map(lambda p, s: p.sharding == s, bb.params, want)))


@on_mesh
def test_on_mesh_make_mesh():
    assert sharding.make_mesh().devices.shape == (8, 1)
    assert sharding.make_mesh(model=2).devices.shape == (4, 2)
    assert sharding.make_mesh(data=2, model=-1).devices.shape == (2, 4)
    with pytest.raises(ValueError, match=r"8 device\(s\) cannot be split into a mesh with data=3"):
        sharding.make_mesh(data=3, model=-1)
    with pytest.raises(ValueError, match="data=3 x model=1 needs 3 devices, got 8"):
        sharding.make_mesh(data=3)
    with pytest.raises(ValueError, match="data=4 x model=4 needs 16 devices, got 8"):
        sharding.make_mesh(4, 4)


@pytest.fixture(scope="module")
def one_device_features(divisible, batch):
    return np.asarray(hh.head_features(hh.load_backbone(divisible), *batch))


@on_mesh
@pytest.mark.parametrize("shape", [(8, 1), (4, 2), (2, 4)])
def test_on_mesh_features_match_one_device(divisible, batch, one_device_features, shape):
    ids, pixels = batch
    want = one_device_features
    bb = hh.load_backbone(divisible, mesh=sharding.make_mesh(*shape))
    got = hh.head_features(bb, ids, pixels)
    assert got.shape == want.shape and got.dtype == np.float32
    assert rel_err(got, want) <= TOL

    before = features.forward._cache_size()
    hh.head_features(bb, ids + 0, pixels * 1.0)
    assert features.forward._cache_size() == before

    assert _placed_by_rules(bb)
    m = shape[1]
    for path, spec, shard in [
        # the layers' parameters are stacked (3 text layers, 2 vision ones), the layer axis whole
        (
            "language_model/layers/attn/q_proj/kernel",
            (None, None, "model", None),
            (3, 64, 8 // m, 8),
        ),
        (
            "language_model/layers/attn/k_proj/kernel",
            (None, None, "model", None),
            (3, 64, 4 // m, 8),
        ),
        ("language_model/layers/mlp/gate_proj/kernel", (None, None, "model"), (3, 64, 96 // m)),
        ("language_model/layers/mlp/down_proj/kernel", (None, "model", None), (3, 96 // m, 64)),
        ("language_model/embed_tokens", ("model", None), (300 // m, 64)),
        ("vision/layers/fc1/kernel", (None, None, "model"), (2, 32, 64 // m)),
        ("projector/linear_1/kernel", ("model", None), (128 // m, 64)),
        ("language_model/layers/input_norm/scale", (None, None), (3, 64)),
    ]:
        param = _param(bb, path)
        assert param.sharding.spec == PartitionSpec(*spec), path
        assert _shard_shape(param) == shard, path


@on_mesh
def test_on_mesh_jit_of_head_features_equals_eager(divisible, batch, one_device_features):
    """A sharded backbone passed into the user's jit: the parameters stay in their shards."""
    ids, pixels = batch
    bb = hh.load_backbone(divisible, mesh=sharding.make_mesh(4, 2))
    got = jax.jit(hh.head_features)(bb, ids, pixels)
    assert rel_err(got, one_device_features) <= TOL
    assert (
        rel_err(got, hh.head_features(bb, ids, pixels)) <= TOL
    )  # partitioned otherwise under jit: float32 sums in another order


@on_mesh
def test_on_mesh_prefix_reuse_splits_the_batch(divisible, batch, rng):
    """Several prompts over the same frames on a (4, 2) mesh: the batch of 3 is padded to the
    data axis and split, and the features equal one device's."""
    ids, pixels = batch
    ids = np.repeat(ids[:1], 3, axis=0)  # one prompt's tokens for every segment, as extraction has
    tail = np.repeat(rng.integers(0, hf.IMAGE_TOKEN - 1, size=(1, 4)), 3, axis=0)
    prompts = [ids, np.concatenate([ids, tail], axis=1)]
    want = np.asarray(head_features_prompts(hh.load_backbone(divisible), prompts, pixels))
    got = head_features_prompts(
        hh.load_backbone(divisible, mesh=sharding.make_mesh(4, 2)), prompts, pixels
    )
    assert got.shape == want.shape == (2, 3, 3, 8, 8)
    assert rel_err(got, want) <= TOL


@on_mesh
def test_on_mesh_generation_matches_one_device(divisible, batch):
    """Greedy decoding on a (4, 2) mesh: the same tokens as on one device."""
    ids, pixels = batch
    want = hh.generate(hh.load_backbone(divisible), ids, 12, pixels, eos_token_id=())
    bb = hh.load_backbone(divisible, mesh=sharding.make_mesh(4, 2))
    got = hh.generate(bb, ids, 12, pixels, eos_token_id=())
    np.testing.assert_array_equal(got.tokens, want.tokens)


@on_mesh
def test_on_mesh_kv_heads_and_vocab_not_dividing(indivisible, batch, rng):
    ids, pixels = batch
    text_ids = hf.random_ids(rng, 5, 7)  # no images; 5 samples padded to 6
    one = hh.load_backbone(indivisible)
    bb = hh.load_backbone(indivisible, mesh=sharding.make_mesh(2, 4))
    assert rel_err(hh.head_features(bb, ids, pixels), hh.head_features(one, ids, pixels)) <= TOL
    assert rel_err(hh.head_features(bb, text_ids), hh.head_features(one, text_ids)) <= TOL
    assert _placed_by_rules(bb)
    for path, spec, shard in [
        ("language_model/layers/attn/q_proj/kernel", (None, None, "model", None), (3, 64, 1, 16)),
        ("language_model/layers/attn/k_proj/kernel", (None, "model", None, None), (3, 16, 2, 16)),
        ("language_model/layers/attn/k_proj/bias", (None, None, None), (3, 2, 16)),
        ("language_model/embed_tokens", (None, "model"), (302, 16)),
    ]:
        param = _param(bb, path)
        assert param.sharding.spec == PartitionSpec(*spec), path
        assert _shard_shape(param) == shard, path


@on_mesh
def test_on_mesh_converted_round_trip_restores_into_shards(tmp_path, divisible, batch):
    ids, pixels = batch
    saved = hh.load_backbone(divisible, mesh=sharding.make_mesh(4, 2))
    out = backbone.save_converted(saved, tmp_path / "converted")
    bb = hh.load_backbone(out, mesh=sharding.make_mesh(2, 4))
    assert bb.mesh.devices.shape == (2, 4) and _placed_by_rules(bb)
    assert _shard_shape(_param(bb, "language_model/layers/attn/q_proj/kernel")) == (3, 64, 2, 8)
    direct = hh.load_backbone(divisible, mesh=sharding.make_mesh(2, 4))
    np.testing.assert_array_equal(
        hh.head_features(bb, ids, pixels), hh.head_features(direct, ids, pixels)
    )


@on_mesh
def test_on_mesh_unstacked_converted_backbone_restores_into_shards():
    """A converted backbone with one ``layers_N`` subtree per layer (tests/test_compat.py):
    each layer goes into its shards on a (2, 4) mesh, then the stacks; the features are the
    ones it gave when written."""
    from test_compat import UNSTACKED

    check = np.load(UNSTACKED / "features.npz")
    bb = hh.load_backbone(UNSTACKED / "backbone", mesh=sharding.make_mesh(2, 4))
    assert _placed_by_rules(bb)
    assert _shard_shape(_param(bb, "language_model/layers/mlp/gate_proj/kernel")) == (4, 128, 64)
    got = hh.head_features(bb, check["input_ids"], check["pixel_values"])
    assert rel_err(got, check["all_layers"]) <= TOL


# --- head hunting on a mesh ---------------------------------------------------------------------


@on_mesh
@pytest.mark.parametrize("shape", [(8, 1), (4, 2), (2, 4)])
def test_on_mesh_saliency_splits_the_heads(monkeypatch, shape):
    from headhunt_jax import hunt

    rng = np.random.default_rng(0)
    # 3 x 7 = 21 heads: not a multiple of 8, so the last device's share is padded.
    features = rng.normal(size=(40, 3, 7, 5)).astype(np.float32)
    labels = (np.arange(40) % 3 == 0).astype(int)
    features[labels == 1] *= rng.uniform(0.5, 2.0, size=(1, 3, 7, 5)).astype(np.float32)
    want = hh.saliency(features, labels, mesh=None)

    placed = []
    original = hunt._saliency

    def spy(flat, *args):
        placed.append(flat)
        return original(flat, *args)

    monkeypatch.setattr(hunt, "_saliency", spy)
    got = hh.saliency(features, labels, heads_per_chunk=2, mesh=sharding.make_mesh(*shape))
    for name in ("lda", "kl", "mmd", "nmi", "combined"):
        assert got[name].shape == (3, 7)
        assert rel_err(got[name], np.asarray(want[name])) <= TOL, name
    # every device holds its own 4 heads (21 padded to 8 devices x 2 chunks x 2), nothing else
    (flat,) = placed
    shards = flat.addressable_shards
    assert len(shards) == 8 and {s.data.shape for s in shards} == {(40, 4, 5)}
    assert len({s.index[1].start for s in shards}) == 8


@on_mesh
def test_on_mesh_cli_extract_uses_every_device(tmp_path):
    from headhunt_jax import cli
    from headhunt_jax.extract import extract_features
    from headhunt_jax.store import FeatureStore

    text = hf.tiny_text_config(num_attention_heads=8, num_key_value_heads=4).to_dict()
    divisible = hf.save_tiny_internvl(tmp_path / "ckpt", text=text)
    write_clip = pytest.importorskip("test_extract").write_clip
    for seed, frames in enumerate((100, 60, 150)):
        write_clip(tmp_path / "videos" / f"v{seed}.mp4", frames, seed=seed)
    prompt = "Analyze the video for anomalies."
    args = ["extract", "--model", divisible, "--videos", tmp_path / "videos", "--prompt", prompt]
    extra = ["--out", tmp_path / "mesh", "--model-parallel", "2", "--batch-size", "4", "--quiet"]
    assert cli.main([*map(str, args), *map(str, extra)]) == 0
    extract_features(
        hh.load_backbone(divisible),
        sorted((tmp_path / "videos").glob("*.mp4")),
        prompt,
        tmp_path / "one",
        root=tmp_path / "videos",
        batch_size=4,
        progress=False,
    )
    got, want = FeatureStore(tmp_path / "mesh").load(), FeatureStore(tmp_path / "one").load()
    assert got.features.shape == want.features.shape and got.features.shape[:1] == (6,)
    assert got.features.shape[2] == 8  # heads
    assert rel_err(got.features, want.features) <= TOL


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """A tiny LLaVA-OneVision checkpoint (the demo's) and a batch of 3 two-frame videos."""
    path = tmp_path_factory.mktemp("llava") / "ckpt"
    tiny_checkpoints.write("llava-onevision", path, ["Anything odd here?"], image_size=28)
    bb = hh.load_backbone(path)
    ids = np.tile(bb.processor().prompt_ids("Anything odd here?", 2)[None], (3, 1))
    videos = np.random.default_rng(1).standard_normal((3, 2, 3, 28, 28)).astype(np.float32)
    return path, ids, videos


@on_mesh
@pytest.mark.parametrize("shape", [(4, 2), (2, 4)])
def test_on_mesh_llava_onevision_matches_one_device(llava, shape):
    path, ids, videos = llava
    want = np.asarray(hh.head_features(hh.load_backbone(path), ids, pixel_values_videos=videos))
    bb = hh.load_backbone(path, mesh=sharding.make_mesh(*shape))
    got = hh.head_features(bb, ids, pixel_values_videos=videos)
    assert got.shape == want.shape and rel_err(got, want) <= TOL
    assert _placed_by_rules(bb)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """The demo's tiny Qwen2.5-VL and a batch of 3 segments of 4 frames (one image each)."""
    path = tmp_path_factory.mktemp("qwen") / "ckpt"
    tiny_checkpoints.write("qwen2.5-vl", path, ["Anything odd here?"])
    proc = hh.load_backbone(path).processor()
    ids = np.tile(proc.prompt_ids("Anything odd here?", 4, (56, 84))[None], (3, 1))
    frames = np.random.default_rng(1).standard_normal((3, 4, 3, 56, 84)).astype(np.float32)
    return path, ids, proc.vision_inputs(frames)


@on_mesh
@pytest.mark.parametrize("shape", [(4, 2), (2, 4)])
def test_on_mesh_qwen2_5_vl_matches_one_device(qwen, shape):
    path, ids, inputs = qwen
    want = np.asarray(hh.head_features(hh.load_backbone(path), ids, **inputs))
    bb = hh.load_backbone(path, mesh=sharding.make_mesh(*shape))
    got = hh.head_features(bb, ids, **inputs)
    assert got.shape == want.shape and rel_err(got, want) <= TOL
    assert _placed_by_rules(bb)
    prompts = [ids, np.concatenate([ids[:, :-3], ids[:, -6:]], axis=1)]  # prefix reuse
    got = head_features_prompts(bb, prompts, layers=(1, 3), **inputs)
    for m, p in enumerate(prompts):
        want = np.asarray(hh.head_features(hh.load_backbone(path), p, layers=(1, 3), **inputs))
        assert rel_err(got[m], want) <= TOL
