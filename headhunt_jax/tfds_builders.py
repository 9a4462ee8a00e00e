"""tensorflow-datasets builders for UCF-Crime and XD-Violence: the video lists, not the pixels.

Each example is one video: ``video_id`` (its path relative to the manual dir), ``label``
(normal/anomaly), ``class_name``, ``events`` int64 [E, 2] (annotated anomalous frame ranges
[start, end); none for training videos) and, in the ``segments`` config, ``fps``, ``num_frames``,
``segments`` int64 [S, 2] (the 48-frame segments' frame ranges [start, end)) and
``frame_indices`` int64 [S, 16] (the frames each segment samples), exactly as
:class:`headhunt_jax.video.VideoReader` cuts the video. Decoded frames are not stored: a single
448x448 float32 tile is 2.4 MB, and UCF-Crime's 128 hours would take petabytes; the pipeline
decodes from ``video_id`` instead, one video at a time.

The data cannot be downloaded automatically (both datasets sit behind request forms or manual
cloud downloads): the manual dir is the dataset root in the layout of
:mod:`headhunt_jax.datasets`. The default config, ``paths``, only lists files; ``segments``
decodes every video once to count its frames (hours for a full dataset). Splits: ``train`` and
``test``, where the layout has them. Records are written as array_record, read without
TensorFlow::

    builder = UcfCrime(config="paths", data_dir=out)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
    test = builder.as_data_source()["test"]

tensorflow-datasets (>= 4.9) builds and reads array_record datasets without TensorFlow installed;
install both with ``pip install 'headhunt-jax[datasets]'``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

try:
    import tensorflow_datasets as tfds
except ImportError as err:
    raise ImportError(
        "headhunt_jax.tfds_builders needs tensorflow-datasets and array-record (TensorFlow "
        "itself is not needed): pip install 'headhunt-jax[datasets]'"
    ) from err

from headhunt_jax.datasets import SPLITS, DatasetListing, SplitNotFoundError, load_dataset
from headhunt_jax.video import FRAMES_PER_SEGMENT, VideoReader

logger = logging.getLogger(__name__)

# The reader resizes the frames it samples; the pixels are thrown away here, and a 1x1 tile keeps
# that resize nearly free.
_DISCARDED_TILE = 1


@dataclasses.dataclass(eq=False)
class VideoListConfig(tfds.core.BuilderConfig):
    """``segments``: decode every video to record its frame count and segments."""

    segments: bool = False


class _VideoListBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A dataset of :mod:`headhunt_jax.datasets` as a tfds dataset; subclasses name it."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Video lists with labels, classes and annotated events."}
    BUILDER_CONFIGS = [
        VideoListConfig(name="paths", description="Video ids, labels, classes and events."),
        VideoListConfig(
            name="segments",
            segments=True,
            description="Also each video's fps, frame count and 48-frame segments.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "paths"
    DATASET: str
    HOMEPAGE: str
    CITATION: str

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        # array_record is the format that random-access reading without TensorFlow needs.
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "video_id": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=["normal", "anomaly"]),
            "class_name": tfds.features.Text(),
            "events": tfds.features.Tensor(shape=(None, 2), dtype=np.int64),
        }
        if self.builder_config.segments:
            features |= {
                "fps": np.float32,
                "num_frames": np.int64,
                "segments": tfds.features.Tensor(shape=(None, 2), dtype=np.int64),
                "frame_indices": tfds.features.Tensor(
                    shape=(None, FRAMES_PER_SEGMENT), dtype=np.int64
                ),
            }
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(features),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
        )

    def _split_generators(self, dl_manager):
        root = Path(str(dl_manager.manual_dir))
        generators = {}
        for split in SPLITS:
            try:
                listing = load_dataset(self.DATASET, root, split)
            except SplitNotFoundError as err:
                logger.warning("%s: no %s split: %s", self.name, split, err)
                continue
            for warning in listing.warnings:
                logger.warning("%s %s: %s", self.name, split, warning)
            generators[split] = self._generate_examples(listing)
        return generators

    def _generate_examples(self, listing: DatasetListing):
        for item in listing:
            example = {
                "video_id": item.video_id,
                "label": item.label,
                "class_name": item.class_name,
                "events": np.asarray(item.events, np.int64).reshape(-1, 2),
            }
            if self.builder_config.segments:
                example |= _segments(item.path)
            yield item.video_id, example


def _segments(path: Path) -> dict:
    """fps, frame count, segment frame ranges [S, 2] and sampled frames [S, F] of one video."""
    with VideoReader(path, image_size=_DISCARDED_TILE) as reader:
        segments = list(reader)
    meta = reader.metadata
    return {
        "fps": np.float32(meta.fps),
        "num_frames": np.int64(meta.frame_count),
        "segments": np.array([(s.start_frame, s.end_frame) for s in segments], np.int64),
        "frame_indices": np.stack([s.frame_indices for s in segments]).astype(np.int64),
    }


class UcfCrime(_VideoListBuilder):
    """UCF-Crime (Sultani et al., CVPR 2018): 1900 surveillance videos, 13 anomaly classes."""

    DATASET = "ucf_crime"
    HOMEPAGE = "https://www.crcv.ucf.edu/projects/real-world/"
    CITATION = """@inproceedings{sultani2018real,
  title={Real-world Anomaly Detection in Surveillance Videos},
  author={Sultani, Waqas and Chen, Chen and Shah, Mubarak},
  booktitle={CVPR},
  year={2018}
}"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download UCF-Crime from https://www.crcv.ucf.edu/projects/real-world/ and arrange the manual dir:
  Videos/<Class>/*.mp4     the anomaly classes (Abuse, ..., Vandalism) and the normal videos
                           (Training_Normal_Videos_Anomaly, Testing_Normal_Videos_Anomaly; any
                           folder whose name contains "Normal"), at any depth under Videos/
  Temporal_Anomaly_Annotation_for_Testing_Videos.txt   the test set's temporal annotation
  Anomaly_Train.txt, Anomaly_Test.txt                  the official split (from
                           UCF_Crimes-Train-Test-Split/Anomaly_Detection_splits), in the root or
                           in Anomaly_Detection_splits/; without them the annotated videos are the
                           test split and all others the training split.
"""


class XdViolence(_VideoListBuilder):
    """XD-Violence (Wu et al., ECCV 2020): 4754 movie and web videos, 6 violence classes."""

    DATASET = "xd_violence"
    HOMEPAGE = "https://roc-ng.github.io/XD-Violence/"
    CITATION = """@inproceedings{wu2020not,
  title={Not only Look, but also Listen: Learning Multimodal Violence Detection under Weak
         Supervision},
  author={Wu, Peng and Liu, Jing and Shi, Yujia and Sun, Yujia and Shao, Fangtao and Wu, Zhaoyang
          and Yang, Zhiwei},
  booktitle={ECCV},
  year={2020}
}"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download XD-Violence's videos and annotations.txt from https://roc-ng.github.io/XD-Violence/ and
arrange the manual dir:
  train/**/*_label_*.mp4   the training videos (optional; the downloaded parts may stay in
                           subfolders)
  test/*_label_*.mp4       the test videos (or videos/, the original code's folder name)
  annotations.txt          the test set's temporal annotation (or inside test/ or videos/)
"""
