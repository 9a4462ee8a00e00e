"""Where the demo detector's attribution heatmaps put their mass: inside the injected anomaly's
region or outside it.

The demo's pieces (``synthetic.make_videos``, the tiny random-weight backbone, extraction under two
prompts, ``experts.hunt``, ``fitting.fit``, ``detection.detect``), or a demo output folder
(``--demo-out demo_out``: its clips, backbone, detector and ``detections.json``). For each
anomalous held-out video whose anomaly has a region smaller than the frame, two segments:
``peak``, the detector's highest smoothed score (its events' peak), and ``event``, the segment
that overlaps the injected event most. ``hh.head_attribution`` of the detector's scorer logit
gives a heatmap a sampled frame (the model's input resolution); the injection's boxes
(``synthetic.Region``, drawn on the generated frames) are mapped onto that resolution by a
nearest-neighbour resize of the mask, the resize that the reader's bicubic one approximates
without blurring it. Sampled frames outside the event have no region and are left out.

Printed per kind and overall: the density ratio, mean heatmap value per pixel inside the region
over the mean outside, pooled over the frames (sums) and as the median of the frames' own ratios;
the frames above 1; and the same figures for the same boxes on the same frames of the footage
before the injection (``clean``), encoded and read the same way: a box where the heatmaps put
mass anyway gives a clean ratio above 1 as well. The flash, the shake and the fire change the
whole frame: no outside, left out (counted). Nothing is asserted.

    python benchmarks/attribution_regions.py [--demo-out demo_out] [--seed 0] [--videos N]
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from headhunt_jax import detection, experts, fitting, synthetic, tiny_checkpoints
from headhunt_jax.annotations import read_annotations
from headhunt_jax.attribution import head_attribution
from headhunt_jax.backbone import load_backbone
from headhunt_jax.detector import Detector
from headhunt_jax.extract import extract_features
from headhunt_jax.prompts import DEFAULT_PROMPTS
from headhunt_jax.store import FeatureStore
from headhunt_jax.video import FRAMES_PER_SEGMENT, VideoReader

FPS = 25  # make_videos' default, which the demo uses


def run_pieces(work: Path, per_class: int, seed: int, videos: int | None):
    """The demo's steps 1-6 (no figures), detection on the localized held-out videos only.
    Returns (clips folder, backbone, detector, detections, generated videos)."""
    clips = work / "clips"
    made = synthetic.make_videos(clips, num_normal=per_class, num_anomalous=per_class, seed=seed)
    events = read_annotations(clips / "annotations.txt")
    train, test = made[0::2], made[1::2]  # as the demo splits them
    bb = load_backbone(
        tiny_checkpoints.write("internvl3", work / "backbone", DEFAULT_PROMPTS, seed=seed)
    )
    outs = [work / "features" / f"prompt{i + 1}" for i in range(len(DEFAULT_PROMPTS))]
    labels = {v.path.name: int(v.label != "A") for v in made}
    report = extract_features(
        bb, [v.path for v in train], DEFAULT_PROMPTS, outs, root=clips, labels=labels,
        progress=False,
    )  # fmt: skip
    if report.failures:
        raise SystemExit(report.summary())
    stores = [FeatureStore(s) for s in report.stores]
    hunted = experts.hunt(stores, k=5, lam=0.5, events=events)
    detector = fitting.fit(stores[0], hunted.heads, events)
    wanted = [v.path for v in test if v.label in synthetic.REGION_BOXES][:videos]
    results, failures = detection.detect(
        bb, detector, wanted, work / "detect_features", root=clips, progress=False
    )
    if failures:
        raise SystemExit("; ".join(f"{f.path}: {f.problem}" for f in failures))
    return clips, bb, detector, results, test


def read_demo(out: Path, seed: int):
    """A demo output folder: (clips, backbone, detector, detections, held-out videos, videos a
    class). The regions are recomputed from the seed and checked against the folder's
    ``regions.json`` (absent from a folder made before it) and ``annotations.txt``."""
    clips = out / "clips"
    report = json.loads((out / "report.json").read_text())
    per_class = (len(report["train_videos"]) + len(report["test_videos"])) // 2
    regions = synthetic.make_regions(per_class, per_class, seed=seed)
    if (clips / synthetic.REGIONS_FILE).exists():
        recorded = synthetic.read_regions(clips / synthetic.REGIONS_FILE)
        same = recorded == regions and all(
            np.array_equal(r.boxes, recorded[name].boxes) for name, r in regions.items()
        )
        if not same:
            raise SystemExit(f"{clips}: its regions.json is not seed {seed}'s (--seed?)")
    events = read_annotations(clips / "annotations.txt")
    for name, r in regions.items():
        if events.get(Path(name).stem) != [(r.frames.start, r.frames.stop)]:
            raise SystemExit(f"{clips}: {name}'s event is not seed {seed}'s (--seed?)")
    test = [
        synthetic.SyntheticVideo(clips / name, "", (), 0, regions.get(name))
        for name in report["test_videos"]
    ]
    bb = load_backbone(out / "backbone")
    detector = Detector.load(out / "detector")
    results = json.loads((out / "detections.json").read_text())
    return clips, bb, detector, results, test, per_class


def segment_pixels(path, segment: int, frames: dict) -> tuple[np.ndarray, np.ndarray]:
    """(sampled frame indices, pixels [F, 3, S, S]) of one segment, as the extraction reads it."""
    with VideoReader(path, **frames) as reader:
        for s in reader:
            if s.index == segment:
                return s.frame_indices, s.pixels
    raise ValueError(f"{path}: no segment {segment}")


def input_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A region mask [h, w] at the model's input size (height, width), nearest neighbour."""
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize(size[::-1], Image.Resampling.NEAREST)) > 127


def densities(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """[frames, 4]: (sum inside, pixels inside, sum outside, pixels outside) a frame."""
    inside = (maps * masks).sum((1, 2))
    outside = (maps * ~masks).sum((1, 2))
    n_in = masks.sum((1, 2))
    n_out = masks.shape[1] * masks.shape[2] - n_in
    return np.stack([inside, n_in, outside, n_out], axis=1).astype(np.float64)


def summary(rows: np.ndarray) -> str:
    """Pooled ratio, median of the frames' ratios, frames above 1 of the [frames, 4] rows."""
    if not len(rows):
        return "no frames"
    pooled = (rows[:, 0].sum() / rows[:, 1].sum()) / (rows[:, 2].sum() / rows[:, 3].sum())
    each = (rows[:, 0] / rows[:, 1]) / (rows[:, 2] / rows[:, 3])
    return f"{pooled:5.2f} {np.median(each):7.2f} {int((each > 1).sum()):4d}/{len(each):<3d}"


def clean_footage(names, per_class: int, seed: int) -> dict[str, np.ndarray]:
    """{name: uint8 [n, H, W, 3]}: those videos' frames before the injection (the generator
    again, from the seed; it stops after the last one asked for)."""
    out, names = {}, set(names)
    made = synthetic._generate(per_class, per_class, 6, 48, (96, 72), seed, (1, 2), True)
    for g in made:
        if not names - set(out):
            break
        if g.name in names:
            out[g.name] = g.clean
    return out


def pooled(chunks, kind: str | None) -> np.ndarray:
    """The [frames, 4] rows of one kind (None: every kind)."""
    got = [rows for k, _, rows in chunks if kind in (None, k)]
    return np.concatenate(got) if got else np.zeros((0, 4))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-out", type=Path, help="a demo output folder to read (else: run)")
    ap.add_argument("--work", type=Path, help="where the run writes (kept); default a temp dir")
    ap.add_argument("--per-class", type=int, default=16, help="videos a class (the demo's 16)")
    ap.add_argument("--seed", type=int, default=0, help="the demo's seed")
    ap.add_argument("--videos", type=int, help="at most this many localized held-out videos")
    args = ap.parse_args()

    start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="attribution_regions_"))
    if args.demo_out:
        clips, bb, detector, results, test, per_class = read_demo(args.demo_out, args.seed)
        source = f"demo output {args.demo_out}"
    else:
        per_class = args.per_class
        clips, bb, detector, results, test = run_pieces(work, per_class, args.seed, args.videos)
        source = "the demo's pieces, run here"
    setup = time.perf_counter() - start
    localized = [v for v in test if v.region is not None and not v.region.whole_frame]
    localized = localized[: args.videos]
    whole = [v for v in test if v.region is not None and v.region.whole_frame]
    by_id = {r["video"]: r for r in results}

    processor = bb.processor()
    frames_kw = processor.frames
    size = frames_kw["image_size"]
    ids = processor.prompt_ids(detector.prompt, FRAMES_PER_SEGMENT, size)[None]
    heads, scorer = detector.expert_heads, detector.scorer
    maps_of = jax.jit(lambda bb, p: head_attribution(bb, ids, p, heads, scorer))
    clean = clean_footage([v.path.name for v in localized], per_class, args.seed)

    rows = {(sel, which): [] for sel in ("peak", "event") for which in ("injected", "clean")}
    lines = []
    passes = 0
    t0 = time.perf_counter()
    for v in localized:
        r = v.region
        result = by_id[v.path.name]
        spans = result["segment_frames"]
        overlap = [max(0, min(e, r.frames.stop) - max(s, r.frames.start)) for s, e in spans]
        chosen = {
            "peak": int(np.argmax(result["smoothed_scores"])),
            "event": int(np.argmax(overlap)),
        }
        clean_path = work / f"clean_{v.path.name}"
        synthetic.write_h264(clean_path, clean[v.path.name], FPS)
        done = {}  # (segment, which) -> rows: the peak may be the event's segment
        for sel, segment in chosen.items():
            for which, path in (("injected", v.path), ("clean", clean_path)):
                indices, pixels = segment_pixels(path, segment, frames_kw)
                keep = [i for i, f in enumerate(indices) if f in r.frames]
                if keep and (segment, which) not in done:
                    vision = processor.vision_inputs(pixels[None])
                    maps = np.asarray(maps_of(bb, vision["pixel_values"]))[keep]
                    shape = maps.shape[1:]
                    masks = np.stack([input_mask(r.mask(int(indices[i])), shape) for i in keep])
                    done[segment, which] = densities(maps, masks), masks.mean()
                    passes += 1
                if keep:
                    got, area = done[segment, which]
                    rows[sel, which].append((r.kind, v.path.name, got))
                if which == "injected":
                    region = f"region {area:.1%} of the frame, ratio {summary(got)}" if keep else ""
                    lines.append(
                        f"  {v.path.name}: event frames [{r.frames.start}, {r.frames.stop}); "
                        f"{sel} segment {segment} (frames {spans[segment][0]}-"
                        f"{spans[segment][1] - 1}, smoothed score "
                        f"{result['smoothed_scores'][segment]:.3f}): {len(keep)}/{len(indices)} "
                        f"sampled frames in the event{', ' if keep else ''}{region}"
                    )
    seconds = time.perf_counter() - t0

    print(
        f"{source}: {per_class} videos a class (half held out), seed {args.seed}, backbone "
        f"{bb.name} (random weights) at {size} px, experts {heads.tolist()}, scorer logit"
    )
    print(
        f"region masks: the generator's boxes on its 96x72 frames, resized to the {size}x{size}"
        " input by nearest neighbour (the reader resizes the frames bicubic)"
    )
    names = ", ".join(sorted({v.region.kind for v in whole}))
    print(
        f"left out: {len(whole)} held-out videos whose injection changes the whole frame "
        f"({names}): no outside to compare"
    )
    print("\n".join(lines))
    print(
        "segment kind      videos | injected: pooled median >1/frames | clean footage, same boxes:"
        " pooled median >1/frames"
    )
    for sel in ("peak", "event"):
        for kind in [*sorted({v.region.kind for v in localized}), None]:
            n = len({name for k, name, _ in rows[sel, "injected"] if kind in (None, k)})
            got = [pooled(rows[sel, which], kind) for which in ("injected", "clean")]
            print(
                f"{sel:7s} {kind or 'all':9s} {n:6d} | {summary(got[0]):>33s} | "
                f"{summary(got[1]):>33s}"
            )
    print(
        f"setup {setup:.0f} s, {passes} heatmap passes of {FRAMES_PER_SEGMENT} frames "
        f"{seconds:.0f} s (compile included)"
    )
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
