"""A detector bundle: its probe (expert heads, or one layer's hidden state), scorer, locator
parameters, the backbone's name and the prompt, saved and loaded as one orbax checkpoint; what it
reads of stored or computed features (``Probe.features_of``, the one place a probe picks its
features) and the scores it gives them (``detector_scores``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from headhunt_jax import files
from headhunt_jax.bundle import BundleError, read_bundle, write_bundle
from headhunt_jax.errors import InputError
from headhunt_jax.features import check_heads, gather_heads
from headhunt_jax.hub import from_record, relative_to
from headhunt_jax.locator import DEFAULT_SIGMA, DEFAULT_TAU, next_power_of_two
from headhunt_jax.resources import package_dir
from headhunt_jax.scorer import KINDS, Scorer, score

PUBLISHED_DIR = package_dir("checkpoints")

# What a detector reads of a segment: "heads", HeadHunt-VAD's expert heads' outputs
# concatenated; "hidden", HiProbe-VAD's hidden state of one decoder layer.
PROBES = ("heads", "hidden")


@dataclasses.dataclass(frozen=True)
class Probe:
    """What a detector reads of a segment's features: ``kind`` "heads" with ``heads`` int
    [K, 2] of (layer, head), their outputs concatenated [K * head_dim]; or "hidden" with
    ``layer``, that decoder layer's hidden state [hidden]."""

    kind: str = "heads"
    heads: np.ndarray | None = None
    layer: int | None = None

    def __post_init__(self):
        if self.kind == "heads":
            object.__setattr__(self, "heads", check_heads(self.heads))
            if self.layer is not None:
                raise InputError("a heads probe reads expert heads, not a layer")
        elif self.kind == "hidden":
            if isinstance(self.layer, bool) or not isinstance(self.layer, int | np.integer):
                raise InputError(f"a hidden probe needs a layer index, got {self.layer!r}")
            if self.layer < 0 or self.heads is not None:
                raise InputError(f"a hidden probe reads one layer >= 0, got {self.layer}")
            object.__setattr__(self, "layer", int(self.layer))
        else:
            raise InputError(f"unknown probe {self.kind!r}; one of {', '.join(PROBES)}")

    @classmethod
    def hidden(cls, layer: int) -> Probe:
        return cls("hidden", None, layer)

    def extraction(self) -> dict:
        """``extract.extract_features``' arguments for this probe's features only."""
        if self.kind == "heads":
            return {"kinds": ("heads",), "heads": self.heads}
        return {"kinds": ("hidden",), "hidden_layers": (self.layer,)}

    def features_of(self, kinds: Mapping[str, np.ndarray], spec, where: str = "") -> np.ndarray:
        """[S, F]: what the probe reads of S rows' features ``kinds`` ({kind: [S, ...]}, as
        ``VideoFeatures.kinds`` or ``extract.batch_features`` give them) of a store of ``spec``
        (``where`` names it); features it cannot read there: an InputError."""
        where = where or "the features"
        if not spec.holds(self.kind):
            flag = "heads,hidden" if self.kind == "hidden" else "heads"
            raise InputError(
                f"{where}: holds no {self.kind} features (extract with --features {flag})"
            )
        if self.kind == "hidden":
            if self.layer not in spec.hidden_layers:
                raise InputError(
                    f"{where}: holds the hidden states of layers {list(spec.hidden_layers)}, "
                    f"not layer {self.layer}"
                )
            x = kinds["hidden"][:, list(spec.hidden_layers).index(self.layer)]
        elif spec.heads is None:  # every head of spec.layers
            x = kinds["heads"]
            check_heads(self.heads, (len(spec.layers), x.shape[-2]), where)
            x = gather_heads(x, self.heads, spec.layers)
        elif [tuple(h) for h in spec.heads] == [tuple(map(int, h)) for h in self.heads]:
            x = kinds["heads"]
        else:
            raise InputError(
                f"{where}: holds the heads {list(spec.heads)}, not {self.heads.tolist()}"
            )
        return np.asarray(x).reshape(len(x), -1)

    def describe(self) -> dict:
        """The probe as JSON: {"probe", "expert_heads"} or {"probe", "layer"}."""
        if self.kind == "heads":
            return {"probe": "heads", "expert_heads": self.heads.tolist()}
        return {"probe": "hidden", "layer": self.layer}


@dataclasses.dataclass(frozen=True)
class Detector:
    """Everything needed to turn a backbone's features into anomaly scores and events.

    expert_heads: int [K, 2] of (layer, head), in the order their features are concatenated
    (a heads probe; None for a hidden one); layer: the decoder layer whose hidden state a hidden
    probe reads (None for a heads probe; ``probe`` gives either as a ``Probe``);
    scorer: trained on the K concatenated head features [K * head_dim] (or the hidden state);
    sigma, tau: the temporal locator's smoothing and threshold;
    backbone: the model the heads belong to (e.g. "OpenGVLab/InternVL3-8B"); prompt: the text
    prompt the features are extracted with; backbone_fingerprint: ``Backbone.fingerprint`` of
    that model's architecture ("" when unknown, as for published heads); dtype: the compute dtype
    the training features came from ("float32", "bfloat16"; "" when unknown); training: how it
    was fitted (``fitting.fit``: the store, rows, held-out metrics, what sigma and tau were
    chosen on; empty when unknown); backbone_path: the directory the backbone was loaded from
    when its features were extracted ("" when unknown), which ``detect`` uses without --model
    (saved relative to the bundle when it lies beside it, so that the folder holding both can
    move); backbone_hub: ``org/name@commit`` when that backbone was loaded by a Hub id ("" when
    not), which ``detect`` resolves instead of the path;
    processor_options: the backbone processor's options the features were extracted with (e.g.
    Qwen2.5-VL's ``mode``), which ``detect`` extracts with again.
    """

    expert_heads: np.ndarray
    scorer: Scorer
    sigma: float = DEFAULT_SIGMA
    tau: float = DEFAULT_TAU
    backbone: str = ""
    prompt: str = ""
    backbone_fingerprint: str = ""
    dtype: str = ""
    training: dict = dataclasses.field(default_factory=dict)
    backbone_path: str = ""
    backbone_hub: str = ""
    processor_options: dict = dataclasses.field(default_factory=dict)
    layer: int | None = None

    def __post_init__(self):
        if self.layer is None:
            heads = check_heads(self.expert_heads)
            object.__setattr__(self, "expert_heads", heads)
        else:
            object.__setattr__(self, "layer", Probe.hidden(self.layer).layer)
            if self.expert_heads is not None:
                raise InputError("a detector reads expert heads or a layer, not both")
        if self.scorer.kind not in KINDS:
            raise InputError(f"unknown scorer kind {self.scorer.kind!r}")
        if self.layer is None and self.scorer.feature_dim % heads.shape[0]:
            raise InputError(
                f"the scorer takes {self.scorer.feature_dim} features, not a multiple of "
                f"{heads.shape[0]} expert heads"
            )
        if not self.sigma > 0:
            raise InputError(f"sigma must be positive, got {self.sigma}")

    @property
    def probe(self) -> Probe:
        """What the detector reads: its expert heads, or its layer's hidden state."""
        if self.layer is None:
            return Probe("heads", self.expert_heads)
        return Probe.hidden(self.layer)

    def features_of(self, kinds: Mapping[str, np.ndarray], spec, where: str = "") -> np.ndarray:
        """[S, F], the scorer's input: ``Probe.features_of``."""
        return self.probe.features_of(kinds, spec, where)

    def save(self, path, *, overwrite=False):
        """Write the bundle as one orbax checkpoint directory."""
        arrays = {"scorer": self.scorer.params}
        if self.layer is None:
            arrays["expert_heads"] = self.expert_heads
        meta = {
            "scorer_kind": self.scorer.kind,
            "sigma": float(self.sigma),
            "tau": float(self.tau),
            "backbone": self.backbone,
            "prompt": self.prompt,
            "backbone_fingerprint": self.backbone_fingerprint,
            "dtype": self.dtype,
            "training": self.training,
            "backbone_path": self.backbone_path and relative_to(self.backbone_path, path),
            "backbone_hub": self.backbone_hub,
            "processor_options": dict(self.processor_options),
            "probe": self.probe.kind,
        }
        if self.layer is not None:
            meta["layer"] = self.layer
        write_bundle(path, arrays, meta, overwrite)

    @classmethod
    def load(cls, path):
        """Read a bundle written by save (bundles of earlier versions lack some fields: they
        take their defaults). A damaged one is an error that names the file."""
        arrays, meta = read_bundle(path)
        if meta.get("probe", "heads") not in PROBES:
            raise BundleError(f"{path}: a detector of unknown probe {meta['probe']!r}")
        hidden = meta.get("probe") == "hidden"
        if "scorer_kind" not in meta or not (hidden or "expert_heads" in arrays):
            raise BundleError(f"{path}: not a detector (no expert heads or scorer)")
        _check_meta(path, meta)
        if hidden and "layer" not in meta:
            raise BundleError(f"{path}: a hidden-state detector without its layer")
        return cls(
            expert_heads=None if hidden else np.asarray(arrays["expert_heads"]),
            layer=meta["layer"] if hidden else None,
            scorer=Scorer(meta["scorer_kind"], arrays["scorer"]),
            sigma=meta["sigma"],
            tau=meta["tau"],
            backbone=meta["backbone"],
            prompt=meta["prompt"],
            backbone_fingerprint=meta.get("backbone_fingerprint", ""),
            dtype=meta.get("dtype", ""),
            training=meta.get("training", {}),
            backbone_path=meta.get("backbone_path") and from_record(meta["backbone_path"], path),
            backbone_hub=meta.get("backbone_hub", ""),
            processor_options=meta.get("processor_options", {}),
        )

    @classmethod
    def from_published(cls, scorer, name="xd_violence_internvl3_8b", directory=PUBLISHED_DIR):
        """A detector with published expert heads (and their backbone, prompt, sigma, tau) and a
        scorer trained on those heads' features; only the heads are published, not a scorer."""
        published = published_experts(name, directory)
        return cls(
            expert_heads=np.asarray(published["expert_heads"]),
            scorer=scorer,
            sigma=published["sigma"],
            tau=published["tau"],
            backbone=published["backbone"],
            prompt=published["prompt"],
        )


def detector_scores(detector: Detector, x) -> np.ndarray:
    """Scores [N] of features [N, F]; rows padded to a power of two so that videos of any length
    share a few compilations."""
    n = x.shape[0]
    if not np.isfinite(x).all():
        raise InputError("features contain NaN or inf")
    padded = np.zeros((next_power_of_two(n), x.shape[1]), np.float32)
    padded[:n] = x
    return np.asarray(score(detector.scorer, padded))[:n]


# The bundle's JSON fields and their types (the first four in every bundle since 0.1.0).
_META_TYPES = {
    "scorer_kind": str,
    "sigma": (int, float),
    "tau": (int, float),
    "backbone": str,
    "prompt": str,
    "backbone_fingerprint": str,
    "dtype": str,
    "training": dict,
    "backbone_path": str,
    "backbone_hub": str,
    "processor_options": dict,
    "probe": str,
    "layer": int,
}
_META_REQUIRED = ("scorer_kind", "sigma", "tau", "backbone", "prompt")


def _check_meta(path, meta: dict) -> None:
    """A bundle's JSON as save writes it: the fields of every version, of their types."""
    missing = [k for k in _META_REQUIRED if k not in meta]
    wrong = [
        k
        for k, kind in _META_TYPES.items()
        if k in meta and (not isinstance(meta[k], kind) or isinstance(meta[k], bool))
    ]
    if missing or wrong:
        problems = [f"no {k}" for k in missing] + [
            f"{k} of type {type(meta[k]).__name__}" for k in wrong
        ]
        file = Path(path).absolute() / "meta" / "metadata"  # where orbax keeps the JSON item
        raise BundleError(
            f"{file if file.is_file() else path}: not a detector bundle's metadata "
            f"({', '.join(problems)})"
        )


def published_experts(name="xd_violence_internvl3_8b", directory=PUBLISHED_DIR):
    """The published expert-head record `name` (a JSON file in checkpoints/) as a dict."""
    path = Path(directory) / f"{name}.json"
    if not path.is_file():
        available = sorted(p.stem for p in Path(directory).glob("*.json"))
        raise FileNotFoundError(f"no published experts {name!r} in {directory}; have {available}")
    return files.read_json(path, "a published expert-head record")
