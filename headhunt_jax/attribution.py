"""Spatial attribution: where in each frame the expert heads' evidence comes from.

The gradient of the detector's logit (or of the chosen heads' features) with respect to the
frames' pixels, through the whole backbone (vision tower, projector, decoder up to the deepest
expert layer), reduced to one heatmap a frame. It answers "where in the frame", beside the
events' "when". Built on the traceable ``head_features``: one ``jax.grad``.

``detect --attribution`` (``peak_attribution``) adds to each video's record the heatmaps of its
peak segment (the highest smoothed score), decoded again as the extraction read it, under the
detector's prompt and with its scorer's logit as the objective; each frame's heatmap is reduced
to a grid of cell means (``block_means``) and divided by the segment's largest cell.
"""

from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from headhunt_jax.backbone import Backbone
from headhunt_jax.errors import InputError
from headhunt_jax.features import check_heads, head_features
from headhunt_jax.scorer import Scorer, _logits
from headhunt_jax.video import VideoError

# The grid each frame's heatmap is reduced to in ``detect``'s records: rows, columns.
CELLS = (16, 16)
# The vision inputs that hold the frames' pixels, by family: images [N, 3, H, W] (InternVL) or
# videos [B, F, 3, H, W] (LLaVA-OneVision).
FRAME_KEYS = ("pixel_values", "pixel_values_videos")


def head_attribution(bb: Backbone, input_ids, pixel_values, heads, weights=None, **vision):
    """Heatmaps float32 [num_images, H, W]: |d objective / d pixel_values| summed over the colour
    channels, for pixel_values [num_images, 3, H, W] (every frame of every sample).

    heads: int [K, 2] (layer, head), static; their features at each sample's last position,
    concatenated in this order, are the experts' [B, K * head_dim]. The objective, summed over
    the B samples (a frame belongs to one sample, so each heatmap is its own sample's):
    ``weights`` None: half the experts' squared norm; a vector [K * head_dim] (a linear
    scorer's ``w``): their dot product, the scorer's logit but for its bias; a ``Scorer``: its
    logit (the MLP's too). ``vision``: the family's other keyword inputs. Traceable as
    ``head_features`` is (not for Qwen2.5-VL).
    """
    return _gradient_maps(bb, input_ids, "pixel_values", pixel_values, heads, weights, vision)


def _gradient_maps(bb, input_ids, key, pixels, heads, weights, vision):
    """|d objective / d pixels| summed over the colour axis (-3): ``head_attribution``'s, with the
    pixels as the vision input ``key``."""
    heads = check_heads(heads)
    layers = tuple(sorted({int(layer) for layer in heads[:, 0]}))
    rows = np.asarray([layers.index(int(layer)) for layer in heads[:, 0]])
    batch = np.shape(input_ids)[0]

    def objective(pixels):
        features = head_features(bb, input_ids, layers=layers, **{key: pixels}, **vision)
        experts = features[:, rows, heads[:, 1]].reshape(batch, -1)
        if weights is None:
            return 0.5 * jnp.sum(experts**2)
        if isinstance(weights, Scorer):
            return jnp.sum(_logits(weights, experts))
        return jnp.sum(experts @ jnp.asarray(weights, jnp.float32))

    grad = jax.grad(objective)(jnp.asarray(pixels, jnp.float32))
    return jnp.abs(grad).sum(axis=-3)


def check_attribution(bb: Backbone) -> None:
    """Refuses a backbone whose pixels are not frames: a family that lays out its vision inputs
    on the host (``prepare``, Qwen2.5-VL's flattened patches [patches, C*T*P*P]). Its head
    features have a gradient with respect to those patches (``features.check_inputs``), but
    mapping it back onto each frame's pixels is not done."""
    if bb.family.prepare is not None:
        raise InputError(
            f"{bb.name}: attribution is not available for {bb.family.name} (its pixels are "
            "flattened patches laid out on the host, and heatmaps are drawn on whole frames)"
        )


def frame_attribution(bb: Backbone, input_ids, vision: dict, heads, weights=None) -> np.ndarray:
    """``head_attribution`` of a processor's vision inputs (``vision_inputs``: InternVL's
    ``pixel_values`` [N, 3, H, W] or LLaVA-OneVision's ``pixel_values_videos`` [B, F, 3, H, W]):
    heatmaps float32 [frames, H, W], the frames in the inputs' order."""
    check_attribution(bb)
    (key,) = [k for k in FRAME_KEYS if k in vision]
    rest = {k: v for k, v in vision.items() if k != key}
    maps = _gradient_maps(bb, input_ids, key, vision[key], heads, weights, rest)
    return np.asarray(maps).reshape(-1, *np.shape(maps)[-2:])


def block_means(maps: np.ndarray, cells: tuple[int, int] = CELLS) -> np.ndarray:
    """Heatmaps [N, H, W] -> [N, h, w]: the mean over each cell of an h x w grid, cell i's rows
    [floor(i H / h), floor((i + 1) H / h)) (columns alike); h, w at most H, W."""
    maps = np.asarray(maps, np.float64)
    height, width = maps.shape[-2:]
    h, w = min(cells[0], height), min(cells[1], width)
    rows, cols = np.arange(h) * height // h, np.arange(w) * width // w
    sums = np.add.reduceat(np.add.reduceat(maps, rows, axis=-2), cols, axis=-1)
    counts = np.outer(np.diff([*rows, height]), np.diff([*cols, width]))
    return sums / counts


def segment_attribution(bb, detector, processor, pixels, seconds, cells=CELLS) -> np.ndarray:
    """The cell means [F, h, w] (``block_means``) of one segment's heatmaps (pixels [F, 3, H, W]
    as the reader gives them), under the detector's prompt, with its scorer's logit on its
    expert heads as the objective."""
    ids = processor.prompt_ids(detector.prompt, pixels.shape[0], tuple(pixels.shape[-2:]), seconds)
    vision = processor.vision_inputs(pixels[None], np.asarray([seconds], np.float32))
    maps = frame_attribution(bb, ids[None], vision, detector.expert_heads, detector.scorer)
    return block_means(maps, cells)


def attribution_record(segment: int, frames, means: np.ndarray) -> dict:
    """A video's ``attribution`` as ``detect`` records it: the segment, its sampled frames (their
    indices in the video), which of them the report's thumbnail shows, the grid's size, the
    largest cell mean (``scale``) and the heatmaps [F, h, w] divided by it, to 3 decimals."""
    scale = float(means.max())
    return {
        "segment": int(segment),
        "frames": [int(f) for f in frames],
        "thumbnail_frame": len(frames) // 2,
        "size": list(means.shape[-2:]),
        "scale": scale,
        "heatmaps": np.round(means / (scale or 1.0), 3).tolist(),
    }


def peak_attribution(
    bb: Backbone, detector, results: Sequence[dict], cells=CELLS, progress: bool = True
) -> list[dict]:
    """Adds to each of ``results`` (``detection.detect``'s) the ``attribution`` of its peak
    segment (the first of the highest smoothed scores), decoded again as the extraction read it
    (``explain.segment_reader``); a video that cannot be decoded again gets
    ``attribution_error``. Returns ``results`` (changed in place)."""
    from headhunt_jax.explain import read_segments, segment_reader

    check_attribution(bb)
    processor, reader_kw = segment_reader(bb, detector)
    for r in tqdm(results, unit="video", desc="attribution", disable=not progress):
        peak = int(np.argmax(r["smoothed_scores"]))
        start = r["segment_frames"][peak][0]
        try:
            segments = read_segments(Path(r["path"]), reader_kw, {start})
        except VideoError as err:
            r["attribution_error"] = f"{err.path}: {err.problem}"
            continue
        if start not in segments:
            r["attribution_error"] = f"{r['path']}: no segment starts at frame {start}"
            continue
        pixels, seconds, frames = segments[start]
        means = segment_attribution(bb, detector, processor, pixels, seconds, cells)
        r["attribution"] = attribution_record(peak, frames, means)
    return list(results)
