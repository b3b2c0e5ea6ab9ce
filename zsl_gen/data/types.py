"""The two in-memory dataset shapes every part of zsl-gen agrees on.

``RawDataset`` is a dataset as read from disk (xlsa17 ``.mat`` or the bring-your-own format): 0-based,
unprocessed numpy arrays. ``ZSLData`` is one evaluation protocol applied to it (``split="test"`` or
``split="val"``), preprocessed, as torch tensors ready to move to the training device.

Class ids are *global*: an index into ``semantics`` / ``class_names`` in both shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

REQUIRED_LOCS = ("trainval", "test_seen", "test_unseen")
OPTIONAL_LOCS = ("train", "val")


@dataclass
class RawDataset:
    """A dataset as stored on disk, 0-based and unprocessed.

    Attributes:
        name: dataset name, e.g. ``"CUB"``.
        features: ``(N, D)`` float32 image features.
        labels: ``(N,)`` int64 class ids in ``[0, C)``.
        semantics: ``(C, A)`` float32 class-semantic matrix (one row per class).
        class_names: ``C`` class names.
        locs: split name -> ``(n,)`` int64 0-based row indices into ``features``. Always has
            ``trainval``, ``test_seen``, ``test_unseen``; ``train`` and ``val`` when the file has them.
        semantic_space: what the semantic rows are, e.g. ``"att"`` or ``"sent"``.
        files: path -> sha256 of every file the data was read from.
        features_note: what the features are when they are not real image features, e.g. simulated ones
            (``zsl-data simulate`` stores it in the ``res101.mat`` it writes); ``None`` otherwise.
    """

    name: str
    features: np.ndarray
    labels: np.ndarray
    semantics: np.ndarray
    class_names: list[str]
    locs: dict[str, np.ndarray]
    semantic_space: str = "att"
    files: dict[str, str] = field(default_factory=dict)
    features_note: str | None = None

    @property
    def n_classes(self) -> int:
        return int(self.semantics.shape[0])

    @property
    def seen_classes(self) -> np.ndarray:
        """Sorted ids of the classes with trainval samples."""
        return np.unique(self.labels[self.locs["trainval"]])

    @property
    def unseen_classes(self) -> np.ndarray:
        """Sorted ids of the classes of ``test_unseen``."""
        return np.unique(self.labels[self.locs["test_unseen"]])


@dataclass
class ZSLData:
    """One protocol of a dataset, preprocessed, as tensors.

    For ``split="test"``: train = trainval, seen = test_seen, unseen = test_unseen.
    For ``split="val"``: unseen = the ``val_loc`` classes; train = 80% per class of the remaining
    ``train_loc`` samples, seen = the held-out 20% (seeded).

    Attributes:
        train_x: ``(N, D)`` float32 training features (seen classes only).
        train_y: ``(N,)`` int64 global class ids.
        seen_x, seen_y: ``(Ns, D)``, ``(Ns,)`` evaluation samples of the seen classes.
        unseen_x, unseen_y: ``(Nu, D)``, ``(Nu,)`` evaluation samples of the unseen classes.
        semantics: ``(C, A)`` float32 semantics of all classes (global ids index rows).
        seen_classes: ``(S,)`` int64 sorted; unseen_classes: ``(U,)`` int64 sorted; disjoint.
        class_names: ``C`` names.
        preprocessing: JSON-able fitted statistics, e.g.
            ``{"features": {"kind": "minmax", "min": [...], "max": [...]}, "semantics": {"l2": False}}``.
        files: path -> sha256 of the source files.
    """

    name: str
    semantic_space: str
    split: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    seen_x: torch.Tensor
    seen_y: torch.Tensor
    unseen_x: torch.Tensor
    unseen_y: torch.Tensor
    semantics: torch.Tensor
    seen_classes: torch.Tensor
    unseen_classes: torch.Tensor
    class_names: list[str]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def semantic_dim(self) -> int:
        return int(self.semantics.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.semantics.shape[0])

    def to(self, device: torch.device | str) -> "ZSLData":
        """A copy whose tensors live on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)
