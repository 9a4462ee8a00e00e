"""The ``headhunt-jax`` command line: convert, extract, hunt, fit, detect, watch, evaluate,
reproduce, demo.

The user's errors (``errors.UserError``: bad flags, missing or malformed files, unreadable videos,
incompatible stores, detectors and checkpoints) are one line on stderr naming the file and the
problem, with exit status 1; no traceback. Any other exception is a bug and keeps its traceback.
In a run over many videos the good ones finish and the failures are listed at the end (exit 1).
"""

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

from headhunt_jax import errors, paths
from headhunt_jax.errors import UserError
from headhunt_jax.watch import add_watch_command

DATASETS = ("ucf_crime", "xd_violence")
# The families' tiny demo checkpoints (``backbones.demo_backbone``; listed here so that the
# parser does not import the families, and checked against the registry by the tests).
DEMO_BACKBONES = ("internvl3", "internvl3.5", "llava-onevision", "qwen2.5-vl", "qwen3-vl")


class CliError(UserError):
    """A wrong flag or argument: printed as one line, exit status 1."""


# Besides UserError: the operating system's word on a path the user gave (a missing file, a
# directory where a file belongs, no permission).
_PATH_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def _local_mesh(model_parallel: int = 1):
    """A mesh over this process's devices when there are several (None for one device)."""
    import jax

    from headhunt_jax.sharding import make_mesh

    if model_parallel < 1:
        raise CliError(f"--model-parallel must be >= 1, got {model_parallel}")
    if len(jax.local_devices()) == 1 and model_parallel == 1:
        return None
    try:
        return make_mesh(model=model_parallel)
    except ValueError as e:
        raise CliError(f"--model-parallel {model_parallel}: {e}") from None


@contextlib.contextmanager
def _checkpoint(path):
    """Loading a checkpoint: a ValueError is its config or tensors refused (a family's strict
    ``from_hf``, a missing tensor), told as one line naming the directory."""
    try:
        yield
    except UserError:
        raise
    except ValueError as e:
        raise CliError(f"{path}: {e}" if str(path) not in str(e) else str(e)) from None


def _load_backbone(args):
    from headhunt_jax.backbone import load_backbone

    mesh = _local_mesh(args.model_parallel)
    with _checkpoint(args.model):
        return load_backbone(args.model, dtype=_dtype(args.dtype), mesh=mesh)


@contextlib.contextmanager
def _names(detector_dir):
    """A backbone that the detector refuses is an error that names the detector."""
    from headhunt_jax.detection import IncompatibleBackbone

    try:
        yield
    except IncompatibleBackbone as e:
        raise CliError(f"{detector_dir}: {e}") from None


def _detector(args):
    """``--detector``, with ``--sigma``/``--tau`` applied; ``--model`` defaults to the backbone
    the detector's features were extracted with."""
    from headhunt_jax.detector import Detector

    detector = Detector.load(args.detector)
    changes = {k: getattr(args, k) for k in ("sigma", "tau") if getattr(args, k, None) is not None}
    if changes.get("tau") is not None and not 0 <= changes["tau"] < 1:
        raise CliError(
            f"--tau must be in [0, 1): a threshold on probabilities, got {changes['tau']}"
        )
    if changes:
        detector = dataclasses.replace(detector, **changes)
    if args.model is None and detector.backbone_hub:
        args.model = detector.backbone_hub  # the same snapshot, from the cache or the Hub
    if args.model is None:
        path = detector.backbone_path
        if not path:
            raise CliError(
                f"pass --model: the backbone the detector was fitted on ({detector.backbone})"
            )
        if not paths.of(path).is_dir():
            raise CliError(
                f"{args.detector}: the backbone it was fitted on is no longer at {path}; pass "
                "--model with its directory"
            )
        args.model = path
    return detector


def _dtype(dtype: str) -> str:
    """``auto``: float32 on CPU, bfloat16 on accelerators."""
    import jax

    if dtype == "auto":
        return "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return dtype


def _absolute(line: str) -> bool:
    return paths.is_url(line) or Path(line).is_absolute()


def _video_list(items) -> tuple[list[Path], Path | None]:
    """Video paths from directories, list files (one path a line) or video files; the root that
    ids are relative to when a single directory is given."""
    from headhunt_jax.extract import list_videos
    from headhunt_jax.video import VIDEO_EXTENSIONS

    videos, root = [], None
    for item in map(paths.of, items):
        if not item.exists():
            raise CliError(f"{item}: no such file or directory")
        if item.is_dir():
            found = list_videos(item)
            if not found:
                raise CliError(f"{item}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
            videos += found
            root = item if len(items) == 1 else None
        elif item.suffix.lower() in (".txt", ".lst", ".list"):
            from headhunt_jax import files

            lines = [line.strip() for line in files.read_lines(item, "a video list")]
            videos += [
                paths.of(line) if _absolute(line) else item.parent / line for line in lines if line
            ]
        else:
            videos.append(item)
    return videos, root


def _xd_labels(videos, root):
    """Video labels from XD-Violence names (``label_A`` normal), when every name carries one."""
    from headhunt_jax.annotations import xd_violence_label
    from headhunt_jax.extract import video_ids

    ids = video_ids(videos, root)
    try:
        return {i: xd_violence_label(i) for i in ids}
    except ValueError:
        return None


def _dataset(args):
    """(root, items) of ``--dataset --root --split`` (``calibration``: the seeded
    ``--calibration-fraction`` of each class of the training split)."""
    from headhunt_jax.datasets import calibration_subset, load_dataset

    if args.root is None:
        raise CliError("--dataset needs --root, the dataset's folder")
    split = "train" if args.split == "calibration" else args.split
    listing = load_dataset(args.dataset, args.root, split)
    for warning in listing.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    items = listing.items
    if args.split == "calibration":
        items = calibration_subset(items, args.calibration_fraction, args.seed)
    return listing.root, items


def _truth(args):
    """(events, labels) for hunt and fit: from the dataset listing (events of the annotated test
    videos, every video's label), or from --annotations (labels then come from the stores)."""
    from headhunt_jax.annotations import read_annotations

    if args.dataset:
        if args.annotations:
            raise CliError("give --annotations or --dataset, not both")
        _, items = _dataset(args)
        events = {i.key: i.events for i in items if i.split == "test"}
        return events, {i.key: i.label for i in items}
    if args.root:
        raise CliError("--root given without --dataset")
    return (read_annotations(args.annotations) if args.annotations else None), None


def _print_failures(failures) -> int:
    if not failures:
        return 0
    print(f"{len(failures)} video(s) failed:", file=sys.stderr)
    for f in failures:
        print(f"  {f.path}: {f.problem}", file=sys.stderr)
    return 1


def _processor_options(args) -> dict:
    """--processor-option KEY=VALUE pairs as a dict."""
    options = {}
    for item in args.processor_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--processor-option {item!r}: expected KEY=VALUE")
        options[key] = value
    return options


# --- argument groups that several commands share ---------------------------------------------


def _backbone_args(p, required=True):
    p.add_argument(
        "--model",
        required=required,
        help="backbone: a Hugging Face Hub id (org/name or org/name@revision), or a HF "
        "checkpoint or converted directory"
        + ("" if required else " (default: the one the detector was fitted on)"),
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="auto: float32 on CPU, bfloat16 on accelerators",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="segments per forward pass (split over this process's devices)",
    )
    p.add_argument(
        "--model-parallel",
        type=int,
        default=1,
        help="devices that split each weight matrix; the other local devices split the "
        "batch (default 1: every device holds the whole model)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _dataset_args(p, split_default=None, what="the videos"):
    p.add_argument(
        "--dataset", choices=DATASETS, help=f"{what} from a dataset's layout (with --root)"
    )
    p.add_argument("--root", type=paths.of, help="the dataset's folder, as downloaded")
    p.add_argument(
        "--split",
        choices=["train", "test", "calibration", "all"],
        default=split_default,
        help="calibration: a seeded --calibration-fraction of each class of the training "
        f"split (default: {split_default})",
    )
    p.add_argument(
        "--calibration-fraction",
        type=float,
        default=0.01,
        help="share of each class of training videos in --split calibration (default 0.01, "
        "the paper's 1%%)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the calibration draw (and of fit --holdout)",
    )


def _processor_arg(p):
    p.add_argument(
        "--processor-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the backbone family's processor (repeatable). Qwen2.5-VL: "
        "mode={images,video} (images, the default, is the original's: the frames as "
        "images; video: as one video). InternVL and LLaVA-OneVision take none",
    )


def _report_arg(p):
    p.add_argument(
        "--report",
        metavar="HTML",
        help="one self-contained HTML page: summary table, each video's timeline, events and "
        "thumbnails (from the same decoding pass), the figures; opens with no network",
    )


def _clip_arg(p):
    p.add_argument(
        "--clip",
        choices=["segment", "video"],
        default="segment",
        help="segment: a feature row per 48-frame segment (inference's unit); video: one row "
        "a video, 16 frames spread over all of it (the original's unit for hunting and "
        "training)",
    )


def _detector_args(p):
    p.add_argument("--detector", required=True)
    p.add_argument("--sigma", type=float, help="override the detector's smoothing sigma")
    p.add_argument("--tau", type=float, help="override the detector's threshold tau")


def _scorer_arg(p):
    p.add_argument("--scorer", default="logistic", choices=["logistic", "mlp", "svm"])


def _hunt_args(p, max_clips_help=None):
    p.add_argument("--k", type=int, default=5, help="number of expert heads")
    p.add_argument("--lam", type=float, default=0.5, help="instability penalty lambda")
    p.add_argument("--max-clips", type=int, default=4000, help=max_clips_help)


# --- the commands: each one's arguments, then what it does ---------------------------------


def _add_convert(sub):
    p = sub.add_parser("convert", help="convert a Hugging Face checkpoint to an orbax checkpoint")
    p.add_argument(
        "hf_dir",
        metavar="model",
        help="a HF checkpoint directory (config.json + safetensors) or a Hub id (org/name or "
        "org/name@revision)",
    )
    p.add_argument("out", type=paths.of, help="output directory")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.set_defaults(func=_convert)


def _convert(args):
    from headhunt_jax import backbone

    with _checkpoint(args.hf_dir):
        bb = backbone.load_backbone(args.hf_dir, dtype=args.dtype)
    out = backbone.save_converted(bb, args.out)
    print(f"converted {bb.name} ({args.dtype}) -> {out}")


def _add_extract(sub):
    p = sub.add_parser(
        "extract", help="head features of every 48-frame segment (or video) into a feature store"
    )
    _backbone_args(p)
    p.add_argument("--videos", nargs="+", help="video directories, list files or videos")
    _dataset_args(p, "train")
    _clip_arg(p)
    _processor_arg(p)
    p.add_argument(
        "--prompt",
        action="append",
        required=True,
        help="repeat for several prompts: one decoding pass, the frames' prefix computed once",
    )
    p.add_argument(
        "--out",
        action="append",
        required=True,
        help="feature store directory, one per --prompt (a rerun resumes it)",
    )
    p.add_argument(
        "--heads",
        help="heads JSON: store these expert heads only (default: all heads; the heads kind)",
    )
    p.add_argument(
        "--features",
        default="heads",
        help="what to store of every segment, one forward for all: heads (every head's output, "
        "HeadHunt-VAD), hidden (every layer's hidden state, HiProbe-VAD) or heads,hidden",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="one of several processes (one a host) writing the stores together, each its "
        "share of the videos; the cluster is found as jax.distributed does (Cloud TPU, SLURM, "
        "Open MPI) or from --coordinator/--num-processes/--process-id or HEADHUNT_COORDINATOR, "
        "HEADHUNT_NUM_PROCESSES, HEADHUNT_PROCESS_ID",
    )
    p.add_argument("--coordinator", help="host:port of process 0 (with --distributed)")
    p.add_argument("--num-processes", type=int, help="number of processes (with --distributed)")
    p.add_argument("--process-id", type=int, help="this process's index (with --distributed)")
    p.set_defaults(func=_extract)


def _process(args):
    """With --distributed, joins the cluster (before anything else starts JAX) and returns how
    the lines of this process begin and the context its start-up runs in
    (``distributed.starting``); else ("", a null context)."""
    cluster = {
        "--coordinator": args.coordinator,
        "--num-processes": args.num_processes,
        "--process-id": args.process_id,
    }
    given = [flag for flag, value in cluster.items() if value is not None]
    if given and not args.distributed:
        raise CliError(f"{', '.join(given)} given without --distributed")
    if not args.distributed:
        return "", contextlib.nullcontext()
    from headhunt_jax import distributed

    index, count = distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    # ... and the context the start-up runs in: all processes begin the work, or all stop
    return f"process {index} of {count}: ", distributed.starting()


def _kinds(text: str) -> tuple[str, ...]:
    """``--features`` (or ``--probe``) as the kinds of features it names, one line if wrong."""
    from headhunt_jax.extract import check_kinds

    return check_kinds(k.strip() for k in text.split(",") if k.strip())


def _extract(args):
    from headhunt_jax.experts import load_heads
    from headhunt_jax.extract import extract_features

    empty = [i + 1 for i, p in enumerate(args.prompt) if not p.strip()]
    if empty:
        raise CliError(f"--prompt number {empty[0]} is empty: give the question to ask")
    kinds = _kinds(args.features)
    if args.heads and "heads" not in kinds:
        raise CliError("--heads chooses expert heads of the heads kind; add heads to --features")
    if len(args.prompt) != len(args.out):
        raise CliError(
            f"{len(args.prompt)} --prompt but {len(args.out)} --out: give one store per prompt"
        )
    process, start = _process(args)
    with start:
        if (args.videos is None) == (args.dataset is None):
            raise CliError("give the videos with --videos or --dataset/--root/--split")
        if args.dataset:
            root, items = _dataset(args)
            videos, labels = [i.path for i in items], {i.video_id: i.label for i in items}
        else:
            videos, root = _video_list(args.videos)
            labels = _xd_labels(videos, root)
        if args.distributed:
            from headhunt_jax import distributed

            videos = distributed.shard_videos(videos)
        bb = _load_backbone(args)
        heads = load_heads(args.heads) if args.heads else None
    report = extract_features(
        bb,
        videos,
        args.prompt,
        args.out,
        heads=heads,
        root=root,
        labels=labels,
        batch_size=args.batch_size,
        clip=args.clip,
        processor_options=_processor_options(args),
        progress=not args.quiet,
        kinds=kinds,
    )
    print(
        f"{process}{', '.join(map(str, report.stores))}: {len(report.written)} videos written, "
        f"{len(report.skipped)} already there, "
        f"{report.segments} segments in {report.batches} batches"
        + (
            f"; {len(report.short)} shorter than one segment (one segment of all frames)"
            if report.short
            else ""
        )
    )
    return _print_failures(report.failures)


def _add_hunt(sub):
    p = sub.add_parser("hunt", help="expert heads from all-head stores under two or more prompts")
    p.add_argument("stores", nargs="+", help="feature stores of the same videos, one per prompt")
    _hunt_args(p, "score heads on at most this many segments (seeded, classes in proportion)")
    p.add_argument(
        "--annotations",
        help="temporal annotations (XD-Violence or UCF-Crime format) for segment labels",
    )
    _dataset_args(p, "all", "labels and events")
    p.add_argument(
        "--probe",
        choices=["heads", "hidden"],
        default="heads",
        help="heads: expert heads by RSS over the prompts (HeadHunt-VAD; two or more stores); "
        "hidden: one layer's hidden state by DLSP (HiProbe-VAD; stores extracted with "
        "--features hidden, the prompts' layer scores averaged)",
    )
    p.add_argument("--out", required=True, help="heads JSON (layers JSON with --probe hidden)")
    p.add_argument(
        "--plot",
        help="RSS heatmap PNG (default: next to --out, heads.png for heads.json); the other "
        "figures (saliency criteria, head importance, t-SNE) go beside it; with --probe hidden "
        "the per-layer criteria PNG",
    )
    p.set_defaults(func=_hunt)


def _hunt(args):
    from headhunt_jax import experts, plots
    from headhunt_jax.store import FeatureStore

    events, labels = _truth(args)
    stores = [FeatureStore(s) for s in args.stores]
    if args.probe == "hidden":
        return _hunt_layer(args, stores, events, labels)
    result = experts.hunt(
        stores, args.k, args.lam, events, args.max_clips, _local_mesh(), labels=labels
    )
    out = paths.of(args.out)
    experts.write_heads(out, result, k=args.k, lam=args.lam)
    png = paths.of(args.plot or out.with_suffix(".png"))
    figures = plots.hunt_figures(result, png, prefix=f"{png.stem}_")
    print(
        f"expert heads (layer, head), best first: {result.heads.tolist()} -> {out}; figures: "
        + ", ".join(map(str, figures.values()))
    )


def _hunt_layer(args, stores, events, labels):
    """``hunt --probe hidden``: DLSP's layer -> the layers JSON and its criteria figure."""
    from headhunt_jax import experts, plots

    result = experts.hunt_layer(stores, events, args.max_clips, _local_mesh(), labels=labels)
    out = paths.of(args.out)
    experts.write_layers(out, result, max_clips=args.max_clips)
    png = plots.layer_criteria(result, paths.of(args.plot or out.with_suffix(".png")))
    print(
        f"layer {result.layer} (DLSP score {result.scores.max():.4f}, {experts.COMBINE_PROMPTS} "
        f"over {len(stores)} prompts) -> {out}; figure: {png}"
    )


def _add_fit(sub):
    p = sub.add_parser("fit", help="train the scorer and calibrate the temporal locator")
    p.add_argument(
        "--store",
        required=True,
        help="feature store (all heads, the expert heads or hidden states)",
    )
    p.add_argument("--heads", help="heads JSON from hunt: a detector of these expert heads")
    p.add_argument(
        "--layers", help="layers JSON from hunt --probe hidden: a detector of its chosen layer"
    )
    p.add_argument(
        "--probe",
        choices=["heads", "hidden"],
        help="what the detector reads (default: heads with --heads, hidden with --layers or --layer)",
    )
    p.add_argument("--layer", type=int, help="with --probe hidden: this layer's hidden state")
    p.add_argument("--annotations", help="temporal annotations for segment labels")
    _dataset_args(p, "all", "labels and events")
    _scorer_arg(p)
    p.add_argument(
        "--holdout",
        type=float,
        help="hold out this fraction of each class's videos (seeded by --seed), train on the "
        "rest and report accuracy, F1, ROC AUC and AP on them (the original: 0.4)",
    )
    p.add_argument(
        "--validation",
        help="feature store of held-out videos to choose sigma and tau on (default: the "
        "training videos, which is optimistic)",
    )
    p.add_argument("--out", required=True, help="detector directory")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_fit)


def _fit(args):
    from headhunt_jax.fitting import fit
    from headhunt_jax.run_report import metric
    from headhunt_jax.store import FeatureStore

    events, labels = _truth(args)
    validation = FeatureStore(args.validation) if args.validation else None
    detector = fit(
        FeatureStore(args.store),
        _fit_probe(args),
        events,
        args.scorer,
        validation,
        labels=labels,
        holdout=args.holdout,
        seed=args.seed,
    )
    detector.save(args.out, overwrite=args.overwrite)
    training = detector.training
    held = training["holdout"]
    if held:
        print(
            f"held out {held['videos']} videos ({held['num']} rows): accuracy "
            f"{held['accuracy']:.4f}, F1 {held['f1']:.4f}, ROC AUC {metric(held['roc_auc'])}, "
            f"AP {metric(held['average_precision'])}"
        )
    print(
        f"detector ({args.scorer} scorer on {training['videos']} videos, {training['rows']} rows; "
        f"sigma {detector.sigma:g}, tau {detector.tau:g} from the {training['calibrated_on']}) "
        f"-> {args.out}"
    )


def _fit_probe(args):
    """The probe ``fit`` trains on: ``--heads``, or ``--layers``/``--layer`` (``--probe``
    hidden); exactly one of them."""
    from headhunt_jax.detector import Probe
    from headhunt_jax.experts import load_heads, load_layer

    given = [f for f in ("heads", "layers", "layer") if getattr(args, f) is not None]
    if len(given) != 1:
        raise CliError(
            "give one of --heads (a heads probe), --layers or --layer (a hidden probe)"
            + (f", not {' and '.join('--' + f for f in given)}" if given else "")
        )
    probe = args.probe or ("heads" if given == ["heads"] else "hidden")
    if (probe == "heads") != (given == ["heads"]):
        raise CliError(f"--probe {probe} does not go with --{given[0]}")
    if args.heads:
        return Probe("heads", load_heads(args.heads))
    layer = load_layer(args.layers) if args.layers else args.layer
    if layer < 0:
        raise CliError(f"--layer must be a layer index >= 0, got {layer}")
    return Probe.hidden(layer)


def _scored(args, bb, detector, videos, root):
    """``detection.detect`` in ``--work`` (default: a temporary folder); with ``--report``, the
    segments' thumbnails come from the same decoding pass. -> (results, failures, thumbnails)"""
    from headhunt_jax import detection, report
    from headhunt_jax.store import FeatureStore

    explainer = None
    if getattr(args, "explain", False):
        from headhunt_jax.explain import DEFAULT_QUESTION, Explainer

        questions = args.explain_prompt or [DEFAULT_QUESTION]
        explainer = Explainer(bb, detector, questions, args.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp, _names(args.detector):
        work = args.work or tmp
        results, failures = detection.detect(
            bb,
            detector,
            videos,
            work,
            root=root,
            batch_size=args.batch_size,
            thumbnail_height=report.THUMBNAIL_HEIGHT if args.report else None,
            explainer=explainer,
            progress=not args.quiet,
        )
        thumbnails = {}
        if args.report and results:
            thumbnails = detection.thumbnails(FeatureStore(work), [r["video"] for r in results])
    return results, failures, thumbnails


def _add_detect(sub):
    p = sub.add_parser("detect", help="anomaly scores and events of videos")
    _backbone_args(p, required=False)
    _detector_args(p)
    p.add_argument("videos", nargs="+", help="videos, directories or list files")
    p.add_argument("--out", help="JSON results (default: stdout)")
    p.add_argument("--per-video", help="directory for one JSON file a video")
    p.add_argument("--plot", help="directory for a PNG timeline per video")
    _report_arg(p)
    p.add_argument("--work", help="keep the expert-head features here (a rerun reuses them)")
    p.add_argument(
        "--explain",
        action="store_true",
        help="the backbone describes each event (its peak segment's frames) in words",
    )
    p.add_argument(
        "--explain-prompt",
        action="append",
        metavar="TEXT",
        help="the question for --explain (repeat for several; default: 'Describe the abnormal "
        "event in these frames.')",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=64, help="the longest answer of --explain, in tokens"
    )
    p.add_argument(
        "--attribution",
        action="store_true",
        help="heatmaps of where in each frame of a video's peak segment the detector's logit "
        "comes from (|d logit / d pixels|, 16x16 cell means; one backward pass a video)",
    )
    p.set_defaults(func=_detect)


def _print_detections(results, summary) -> None:
    """A line a video (and one an explained event), then the counts."""
    for r in results:
        events = ", ".join(f"{e['start_s']}-{e['end_s']} s" for e in r["events"]) or "none"
        print(f"{r['video']}: score {r['video_score']:.3f}, events: {events}")
        for e in r["events"]:
            if "explanation" in e:
                text = e["explanation"]
                text = text if isinstance(text, str) else " | ".join(text)
                print(f"  {e['start_s']}-{e['end_s']} s: {text!r}")
    if any("explanation_note" in e for r in results for e in r["events"]):
        from headhunt_jax.explain import RANDOM_NOTE

        print(f"explanations: {RANDOM_NOTE}")
    print(
        f"{summary['videos']} videos scored, {summary['anomalous']} with events "
        f"({summary['events']} events), {summary['failed']} failed"
    )


def _detect(args):
    from headhunt_jax import plots, run_report

    detector = _detector(args)
    videos, root = _video_list(args.videos)
    bb = _load_backbone(args)
    if args.attribution:
        from headhunt_jax import attribution

        attribution.check_attribution(bb)  # before the extraction, not after it
    results, failures, thumbnails = _scored(args, bb, detector, videos, root)
    if args.attribution:
        attribution.peak_attribution(bb, detector, results, progress=not args.quiet)
    record = run_report.detection_record(results, failures)
    if args.per_video:
        folder = paths.mkdir(args.per_video)
        for r in results:
            paths.write_text(
                folder / (quote(r["video"], safe="") + ".json"), json.dumps(r, indent=1)
            )
    if args.out or args.per_video:
        if args.out:
            paths.write_text(args.out, json.dumps(record, indent=1))
        _print_detections(results, record["summary"])
    else:
        print(json.dumps(record, indent=1))
    if args.plot:
        folder = paths.mkdir(args.plot)
        for r in results:
            # Percent-encoded ids keep videos of one name in different folders apart.
            plots.timeline(r, folder / (quote(r["video"], safe="") + ".png"))
    if args.report:
        facts = run_report.run_facts(args.detector, args.model, detector)
        run_report.write_detection_page(args.report, results, facts, thumbnails, failures)
        # With the results as JSON on stdout, stdout stays JSON.
        where = sys.stdout if args.out or args.per_video else sys.stderr
        print(f"report -> {args.report}", file=where)
    return _print_failures(failures)


def _add_evaluate(sub):
    p = sub.add_parser(
        "evaluate", help="frame-level and video-level metrics on a dataset's test split"
    )
    _backbone_args(p, required=False)
    _detector_args(p)
    _dataset_args(p, "test")
    p.add_argument("--out", help="JSON report")
    p.add_argument("--per-video", help="JSON file of each video's frame-level metrics")
    _report_arg(p)
    p.add_argument("--work", help="keep the expert-head features here (a rerun reuses them)")
    p.set_defaults(func=_evaluate)


def _evaluate(args):
    from headhunt_jax import run_report
    from headhunt_jax.evaluation import evaluate

    detector = _detector(args)
    root, items = _dataset(args)
    bb = _load_backbone(args)
    results, failures, thumbnails = _scored(args, bb, detector, [item.path for item in items], root)
    failed = _print_failures(failures)
    if not results:
        raise CliError(f"{root}: no video of the {args.split} split could be read")
    events = {item.key: item.events for item in items}
    labels = {item.key: item.label for item in items}
    metrics = evaluate(results, events, sigma=detector.sigma, labels=labels)
    per_video = metrics.pop("per_video")
    report = run_report.evaluation_record(args.dataset, args.split, metrics, failures)
    if args.out:
        paths.write_text(args.out, json.dumps(report, indent=1))
    if args.per_video:
        paths.write_text(args.per_video, json.dumps(per_video, indent=1))
    video = metrics["video_level"]["max"]
    print(
        f"{args.dataset} {args.split}: frame-level ROC AUC {report['auc']:.4f}, AP {report['ap']:.4f} "
        f"over {metrics['num_videos']} videos; video-level (max) ROC AUC "
        f"{run_report.metric(video['roc_auc'])}, F1 {video['f1']:.4f}"
        + (f" ({len(failures)} unreadable, left out)" if failures else "")
    )
    if args.report:
        run_report.write_evaluation_page(
            args.report,
            results,
            title=f"headhunt-jax evaluate: {args.dataset} {args.split}",
            facts={"dataset": f"{args.dataset} at {args.root}, {args.split} split"}
            | run_report.run_facts(args.detector, args.model, detector),
            events=events,
            labels=run_report.labels_by_video(results, labels),
            metrics=metrics,
            thumbnails=thumbnails,
            figures=run_report.evaluation_figures(results, events, labels, metrics, detector.sigma),
            failures=failures,
        )
        print(f"report -> {args.report}")
    return failed


def _add_reproduce(sub):
    p = sub.add_parser(
        "reproduce",
        help="the paper's protocol: calibration subset, extraction, hunting, scorer, locator, "
        "evaluation on the test split (rerun to continue)",
    )
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument(
        "--root", type=paths.of, required=True, help="the dataset's folder, as downloaded"
    )
    _backbone_args(p)
    p.add_argument("--out", type=paths.of, required=True, help="run directory (rerun to continue)")
    p.add_argument("--prompts", help="prompts file (default: the five of data/prompts.json)")
    p.add_argument("--calibration-fraction", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    _hunt_args(p)
    _scorer_arg(p)
    p.add_argument(
        "--clip",
        choices=["video", "segment"],
        default="video",
        help="the unit heads are hunted and the scorer trained on (default video, the paper's)",
    )
    p.add_argument(
        "--probe",
        default="heads",
        help="heads (HeadHunt-VAD's expert heads), hidden (HiProbe-VAD's layer) or heads,hidden: "
        "both side by side on one extraction, a column each in the report",
    )
    _processor_arg(p)
    _report_arg(p)
    p.set_defaults(func=_reproduce)


def _reproduce(args):
    from headhunt_jax import reproduce
    from headhunt_jax.prompts import load_prompts

    protocol = reproduce.Protocol(
        dataset=args.dataset,
        root=str(args.root),
        model=str(args.model),
        prompts=load_prompts(args.prompts),
        calibration_fraction=args.calibration_fraction,
        seed=args.seed,
        k=args.k,
        lam=args.lam,
        clip=args.clip,
        max_clips=args.max_clips,
        scorer=args.scorer,
        dtype=_dtype(args.dtype),
        processor_options=_processor_options(args),
        probes=_kinds(args.probe),
    )
    say = (lambda *a: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    report = reproduce.reproduce(
        protocol,
        args.out,
        lambda: _load_backbone(args),
        batch_size=args.batch_size,
        progress=not args.quiet,
        say=say,
        html=args.report,
    )
    print(reproduce.summary(report))
    print(f"-> {paths.of(args.out) / 'report.json'}" + (f", {args.report}" if args.report else ""))
    return 1 if report["failures"] else 0


def _add_demo(sub):
    p = sub.add_parser(
        "demo", help="the whole pipeline on real footage with a tiny random backbone"
    )
    p.add_argument("--out", default="demo_out", help="output directory")
    p.add_argument(
        "--backbone",
        default="internvl3",
        choices=DEMO_BACKBONES,
        help="the architecture of the tiny random backbone",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_demo)


def _demo(args):
    from headhunt_jax.demo import run_demo

    report = run_demo(args.out, seed=args.seed, progress=not args.quiet, backbone=args.backbone)
    print(
        f"frame-level ROC AUC {report['auc']:.3f}, AP {report['ap']:.3f} on {report['num_videos']} "
        f"held-out videos in {report['seconds']} s -> {paths.of(args.out) / 'report.json'}"
    )
    print(
        "score a video of your own with the demo's detector and backbone: headhunt-jax detect "
        f"--detector {paths.of(args.out) / 'detector'} VIDEO.mp4"
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="headhunt-jax",
        description="Video anomaly detection from single attention heads of a frozen MLLM.",
    )
    ap.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not keep compiled programs between runs (default: in HEADHUNT_CACHE_DIR or "
        "~/.cache/headhunt-jax)",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    _add_convert(sub)
    _add_extract(sub)
    _add_hunt(sub)
    _add_fit(sub)
    _add_detect(sub)
    add_watch_command(sub, _backbone_args, _detector, _load_backbone)
    _add_evaluate(sub)
    _add_reproduce(sub)
    _add_demo(sub)
    return ap


def _compile_cache(enabled: bool) -> None:
    """JAX's persistent compilation cache, so that a command compiles a backbone once for every
    later run: in ``HEADHUNT_CACHE_DIR`` or the user's cache folder."""
    if not enabled:
        return
    import jax

    folder = paths.cache_dir() / "jax"
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Every program, however quick to compile: a run's many small ones (scorer, smoothing,
    # metrics) add up to a second of a warm `detect` on the demo (3.5 s with JAX's 0.5 s floor).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _check_values(args) -> None:
    """Values that parse but mean nothing a user could want."""
    if getattr(args, "lam", 0) < 0:
        raise CliError(
            f"--lam must be >= 0: the weight of a head's instability across prompts, got {args.lam}"
        )


def _urls(args) -> list[str]:
    """The URLs among a command's arguments (to name in a bucket's error)."""
    values = [v for v in vars(args).values() if v is not None]
    flat = [x for v in values for x in (v if isinstance(v, list | tuple) else [v])]
    return [str(x) for x in flat if paths.is_url(x)]


def _kept(args) -> str:
    """What an interrupted command leaves, and how to go on."""
    from headhunt_jax.store import SPEC_FILE, FeatureStore

    if args.command == "extract":
        stores = [out for out in args.out if (paths.of(out) / SPEC_FILE).exists()]
        counts = ", ".join(f"{len(FeatureStore(s))} videos in {s}" for s in stores)
        return (
            f"kept {counts or 'nothing yet'} (a video being written is dropped whole); rerun "
            "the same command to resume"
        )
    if args.command == "reproduce":
        return f"the finished stages are kept in {args.out}; rerun the same command to continue"
    if args.command == "watch":
        return "the events above were reported as they closed; the open ones are lost"
    return "nothing half-written is kept"


def main(argv=None) -> int:
    import signal
    import threading

    args = build_parser().parse_args(argv)
    _compile_cache(not args.no_compile_cache)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, errors.terminate) if main_thread else None
    unraisable = sys.unraisablehook

    # A signal that lands in a finalizer is swallowed there (and raised again at the next
    # safe point): not a traceback to print.
    def hook(u):
        if not isinstance(u.exc_value, errors.Terminated):
            unraisable(u)

    sys.unraisablehook = hook
    try:
        _check_values(args)
        code = args.func(args) or 0
        errors.check_terminated()  # a signal that a finalizer swallowed
        return code
    except errors.Terminated:
        print(f"headhunt-jax {args.command}: terminated (SIGTERM): {_kept(args)}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("headhunt-jax: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # A bucket's client failing (no credentials, no bucket, a missing object, a denied
        # write) is told in one line naming the URL, as the operating system's word on a path is.
        line = None if isinstance(e, UserError) else paths.problem(e, _urls(args))
        if line is None and not isinstance(e, (UserError, *_PATH_ERRORS)):
            raise
        print(f"headhunt-jax {args.command}: error: {line or e}", file=sys.stderr)
        return 1
    finally:
        if sys.unraisablehook is hook:  # another hook wrapped it (files.quiet_abandoned_reads)
            sys.unraisablehook = unraisable
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def run() -> None:
    """The console script. After a user's error, the process ends without the interpreter's
    shutdown, where the reads orbax abandoned on a damaged checkpoint would still print
    tracebacks from its threads: the one line stays the only line."""
    code = main()
    if code == 1:
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
