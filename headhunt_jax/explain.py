"""Explanations: the frozen backbone says in words what happens in each detected event.

The paper's optional last step. Each event's peak segment (its highest smoothed score) goes to
the backbone with a question, after the processor's own prompt layout, and the backbone answers
by greedy decoding (``generation.generate``); the answer goes with the event (``explanation``).

The question comes after the same frames as the detection prompt, so the two prompts share
their first tokens (system turn, frames). With an ``Explainer``, ``detect``'s extraction pass
runs that shared prefix once through every layer (``prefill``), takes the detection features
from it, and keeps the keys and values of the segments that may become an event's peak: the
newest few (a smoothed score is final once the kernel's half width of segments after it is
scored) and the best so far of the run above tau. When a run ends, its peak is explained from
the kept keys and values: only the question's tokens and the answer are new, and memory is
bounded by the kernel's width, not by the video's length. The smoothed scores and events are
``watch``'s online ones, which equal ``detect``'s. Events not explained during the pass (videos
already in the ``--work`` store) are explained afterwards from their frames decoded again
(``explain_events``).
"""

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from headhunt_jax.backbone import Backbone
from headhunt_jax.detector import detector_scores
from headhunt_jax.errors import InputError
from headhunt_jax.extract import frame_seconds, split_kinds
from headhunt_jax.features import heads_after_prefix, shared_prefix_length
from headhunt_jax.generation import Prefix, generate, prefill
from headhunt_jax.models.tokenizer import load_tokenizer
from headhunt_jax.stream import EventTracker, OnlineSmoother
from headhunt_jax.video import FRAMES_PER_SEGMENT, SEGMENT_LENGTH, VideoError, VideoReader

DEFAULT_QUESTION = "Describe the abnormal event in these frames."
MAX_NEW_TOKENS = 64
RANDOM_NOTE = "the backbone's weights are random: this text is noise, not an explanation"


def random_weights(bb: Backbone) -> bool:
    """Whether the backbone is one of the demo's fixed-seed random checkpoints ('...-random')."""
    return bb.name.endswith("-random")


def text_prefix_length(bb: Backbone, prompt_ids: Sequence[np.ndarray]) -> int:
    """The tokens that prompts [B, T_m] share, ending with text (a prefix for ``prefill``)."""
    n = shared_prefix_length(prompt_ids, bb.config.vision_token_ids)
    while n > 0 and np.isin(prompt_ids[0][0, n - 1], bb.config.vision_token_ids):
        n -= 1
    return n


def features_with_prefix(
    bb: Backbone, prompt_ids, prefix_length: int, layers, kinds=("heads",), **vision
):
    """(the features of ``prompt_ids`` [B, T] at ``layers``, {kind: [B, len(layers), ...]} for
    each of ``kinds``, as ``head_features`` and ``hidden_features`` give them; the ``Prefix`` of
    their first ``prefix_length`` tokens, every layer): one pass over the prefix serves both."""
    ids = np.asarray(prompt_ids, np.int32)
    cache = prefill(bb, ids[:, :prefix_length], **vision)
    suffix = ids[:, prefix_length:]
    positions = jnp.asarray(cache.positions_after(suffix.shape[1]))
    layers = tuple(int(i) for i in layers)
    suffix = jnp.asarray(suffix)
    feats = heads_after_prefix(
        bb.model, bb.params, suffix, cache.keys, cache.values, positions, layers, tuple(kinds)
    )
    if tuple(kinds) == ("heads",):
        feats = {"heads": feats}
    return {kind: np.asarray(value) for kind, value in feats.items()}, cache


def answer(bb, cache: Prefix, questions, max_new_tokens, tokenizer) -> str | list[str]:
    """The answers to each question's ids after a one-segment prefix (one question: a string)."""
    texts = [
        generate(bb, q[None], max_new_tokens, prefix=cache, tokenizer=tokenizer).text[0]
        for q in questions
    ]
    return texts[0] if len(texts) == 1 else texts


@dataclasses.dataclass
class _Video:
    smoother: OnlineSmoother
    events: EventTracker
    kept: dict = dataclasses.field(default_factory=dict)  # segment -> (Prefix, question ids)
    scored: int = 0
    final: int = 0  # segments whose smoothed score is out


class Explainer:
    """Explains events during ``extract_features`` (``explainer=``): see the module docstring.

    ``batch_features`` stands in for the extraction's own forward; ``close`` ends a video.
    Smoothed scores and events are ``watch``'s (``stream.OnlineSmoother`` with the kernel's
    half width of lookahead, ``stream.EventTracker``): ``detect``'s, as the segments come.
    ``answers``: {video id: {peak segment: answer}}; ``reused``: events explained from kept
    keys and values."""

    def __init__(
        self,
        bb: Backbone,
        detector,
        questions: Sequence[str] = (DEFAULT_QUESTION,),
        max_new_tokens: int = MAX_NEW_TOKENS,
    ):
        self.bb, self.detector = bb, detector
        self.questions = _questions(questions)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        self.max_new_tokens = max_new_tokens
        self.tokenizer = load_tokenizer(bb.path)
        self.videos: dict[int, _Video] = {}
        self.answers: dict[str, dict[int, object]] = {}
        self.reused = 0
        self._pending: dict[int, dict[int, object]] = defaultdict(dict)
        self._ids: dict[tuple, list[np.ndarray]] = {}

    def batch_features(self, processor, input_ids, batch, spec) -> dict:
        """The detection features of a batch (as ``extract.batch_features``: {kind: [1, B,
        ...]}), keeping each real row's prefix and scoring it."""
        (ids,) = input_ids
        frames, size = batch.pixels.shape[1], tuple(batch.pixels.shape[-2:])
        seconds = batch.rows[0].frame_seconds if processor.timed else None  # one a batch
        questions = self._question_ids(processor, frames, size, seconds)
        n = text_prefix_length(self.bb, [ids[:1]] + [q[None] for q in questions])
        seconds = [r.frame_seconds for r in batch.rows]
        seconds += seconds[-1:] * (len(batch.pixels) - len(seconds))  # padding rows
        vision = processor.vision_inputs(batch.pixels, np.asarray(seconds, np.float32))
        layers = tuple(sorted({*spec.layers, *spec.hidden_layers}))
        feats, cache = features_with_prefix(self.bb, ids, n, layers, spec.kinds, **vision)
        feats = split_kinds({k: v[None] for k, v in feats.items()}, layers, spec)
        x = self.detector.features_of({k: v[0] for k, v in feats.items()}, spec)
        scores = detector_scores(self.detector, x)
        for i, row in enumerate(batch.rows):
            video = self.videos.get(row.video)
            if video is None:
                detector = self.detector
                video = _Video(OnlineSmoother(detector.sigma), EventTracker(detector.tau, 1.0))
                self.videos[row.video] = video
            video.kept[video.scored] = (cache.rows(slice(i, i + 1)), [q[n:] for q in questions])
            video.scored += 1
            self._advance(row.video, video.smoother.push(float(scores[i])))
        return feats

    def _question_ids(self, processor, frames: int, size, seconds) -> list[np.ndarray]:
        """Each question's prompt ids for segments of ``frames`` frames of ``size``,
        ``seconds`` apart (None: a prompt without times) (cached)."""
        key = (frames, size, seconds)
        if key not in self._ids:
            self._ids[key] = [
                processor.prompt_ids(q, frames, size, seconds) for q in self.questions
            ]
        return self._ids[key]

    def _advance(self, n: int, due) -> None:
        """Runs the smoothed scores now out through the events; a closed event's peak is
        explained, and only the segments that may still be a peak keep their keys and values."""
        video = self.videos[n]
        for s in due:
            _, closed = video.events.update(s.index, s.smoothed, (0, 0))
            if closed is not None:
                self._explain(n, closed["peak_segment"])
            video.final = s.index + 1
        keep = video.events.peak
        for j in [j for j in video.kept if j < video.final and j != keep]:
            del video.kept[j]

    def _explain(self, n: int, segment: int) -> None:
        cache, questions = self.videos[n].kept.pop(segment)
        self._pending[n][segment] = answer(
            self.bb, cache, questions, self.max_new_tokens, self.tokenizer
        )

    def close(self, n: int, video_id: str | None) -> None:
        """Video ``n`` of the extraction has ended (``video_id`` None: it failed)."""
        if n in self.videos:
            video = self.videos[n]
            self._advance(n, video.smoother.finish())
            closed = video.events.finish()
            if closed is not None:
                self._explain(n, closed["peak_segment"])
            del self.videos[n]
        answers = self._pending.pop(n, {})
        if video_id is not None:
            self.answers[video_id] = answers

    def attach(self, results: Sequence[dict], progress: bool = True) -> list[dict]:
        """Puts the answers on the events of ``results`` (``detection.detect``'s) at their peak
        segments; the events left are explained from their frames (``explain_events``)."""
        left = []
        for r in results:
            events = []
            for event in r["events"]:
                got = self.answers.get(r["video"], {}).get(event["peak_segment"])
                if got is None:
                    events.append(event)
                    continue
                event["explanation"] = got
                if random_weights(self.bb):
                    event["explanation_note"] = RANDOM_NOTE
                self.reused += 1
            if events:
                left.append({**r, "events": events})
        if left:
            explain_events(
                self.bb, self.detector, left, self.questions, self.max_new_tokens, progress
            )
        return list(results)


def _questions(questions) -> list[str]:
    questions = [questions] if isinstance(questions, str) else list(questions)
    if not questions or any(not q.strip() for q in questions):
        raise InputError("explanation questions must be non-empty text")
    return questions


def segment_reader(bb: Backbone, detector) -> tuple[object, dict]:
    """(the processor, ``VideoReader``'s keyword arguments) that ``detect``'s extraction read a
    detector's segments with: ``read_segments`` decodes them again as it did."""
    processor = bb.processor(None, **dict(detector.processor_options or {}))
    reader_kw = dict(
        **processor.frames,
        frames_per_segment=FRAMES_PER_SEGMENT,
        segment_length=SEGMENT_LENGTH,
        clip="segment",
    )
    return processor, reader_kw


def read_segments(
    path, reader_kw: dict, starts: set[int]
) -> dict[int, tuple[np.ndarray, float, np.ndarray]]:
    """{start frame: (pixels [F, 3, H, W], seconds between sampled frames, the sampled frames'
    indices [F])} of the segments of ``path`` that start at ``starts``, decoding no further than
    the last of them."""
    out = {}
    with VideoReader(path, **reader_kw) as reader:
        for seg in reader:
            if seg.start_frame in starts:
                seconds = frame_seconds(seg.frame_indices, reader.fps)
                out[seg.start_frame] = (seg.pixels, seconds, seg.frame_indices)
            if len(out) == len(starts):
                break
    return out


def segment_answers(
    bb: Backbone,
    processor,
    pixels: np.ndarray,
    frame_seconds: float,
    questions: Sequence[str],
    max_new_tokens: int = MAX_NEW_TOKENS,
    tokenizer=None,
) -> str | list[str]:
    """The backbone's answers to ``questions`` about one segment (pixels [F, 3, H, W]): the
    frames' prefix runs once, each question after it."""
    frames, size = pixels.shape[0], pixels.shape[-2:]
    ids = [
        processor.prompt_ids(q, frames, size, frame_seconds)[None] for q in _questions(questions)
    ]
    vision = processor.vision_inputs(pixels[None], np.asarray([frame_seconds], np.float32))
    tokenizer = tokenizer or load_tokenizer(bb.path)
    n = text_prefix_length(bb, ids)
    cache = prefill(bb, ids[0][:, :n], **vision)
    return answer(bb, cache, [i[0, n:] for i in ids], max_new_tokens, tokenizer)


def explain_events(
    bb: Backbone,
    detector,
    results: Sequence[dict],
    questions: Sequence[str] = (DEFAULT_QUESTION,),
    max_new_tokens: int = MAX_NEW_TOKENS,
    progress: bool = True,
) -> list[dict]:
    """Adds to each event of ``results`` (``detection.detect``'s) the backbone's ``explanation``
    of its peak segment, decoded again from the video (one question: a string; several: a
    list), and with the demo's random weights an ``explanation_note`` saying the text is noise.
    A video that cannot be decoded again gets ``explanation_error`` on its events. Returns
    ``results`` (changed in place)."""
    questions = _questions(questions)
    processor, reader_kw = segment_reader(bb, detector)
    tokenizer = load_tokenizer(bb.path)
    todo = defaultdict(list)
    for r in results:
        for event in r["events"]:
            todo[r["path"]].append((event, r["segment_frames"][event["peak_segment"]][0]))
    total = sum(map(len, todo.values()))
    with tqdm(total=total, unit="event", desc="explain", disable=not progress) as bar:
        for path, events in todo.items():
            try:
                segments = read_segments(Path(path), reader_kw, {start for _, start in events})
            except VideoError as err:
                for event, _ in events:
                    event["explanation_error"] = f"{err.path}: {err.problem}"
                bar.update(len(events))
                continue
            for event, start in events:
                bar.update(1)
                if start not in segments:
                    event["explanation_error"] = f"{path}: no segment starts at frame {start}"
                    continue
                pixels, seconds, _ = segments[start]
                event["explanation"] = segment_answers(
                    bb, processor, pixels, seconds, questions, max_new_tokens, tokenizer
                )
                if random_weights(bb):
                    event["explanation_note"] = RANDOM_NOTE
    return list(results)
