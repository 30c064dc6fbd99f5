"""Shipped models (``report/<name>/model/``, committed with their report) serve any copy of their data: a user's
FER2013, in any layout, order or encoding, is matched face by face to the model's faces (data.face_keys). A model
trained with the same recipe serves a dataset when at least ``SERVE_MIN_SHARE`` of its training faces are among the
model's (exactly or nearly); validation is then the user's faces that are the model's validation faces (faces it
never saw are counted and stay out: the model's own split is what keeps validation honest)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fer_lib.core.io import array_sha256, atomic_savez, file_sha256
from fer_lib.data.face_keys import KEYS_FILE, SIDE_NAMES, TRAIN, VAL, FaceKeys, FaceMatch, match_faces
from fer_lib.data.layouts import Dataset, FaceSet
from fer_lib.training.runs import RUN_FILES, TrainConfig

SERVE_MIN_SHARE = 0.90  # of the user's training faces found among the model's


def shipped_models(root: Path) -> list[Path]:
    """The finished model folders that carry the keys of their faces, ``root/<name>/model/``, in name order."""
    return [d for d in sorted(Path(root).glob("*/model")) if all((d / f).is_file() for f in (*RUN_FILES, KEYS_FILE))]


@dataclass(frozen=True)
class ServedCopy:
    """A user's dataset served by a shipped model."""

    model_dir: Path
    match: FaceMatch  # the user's training faces, each on the model's training or validation side, or new

    def split(self, train: FaceSet) -> tuple[FaceSet, FaceSet]:
        """(the user's faces the model trained on, the user's faces that are the model's validation faces)."""
        side = self.match.side
        return train.subset(np.flatnonzero(side == TRAIN)), train.subset(np.flatnonzero(side == VAL))

    def summary(self) -> dict:
        """What metrics.json and the page say about the match (the model is named after its report)."""
        sides = {name: int((self.match.side == i).sum()) for i, name in enumerate(SIDE_NAMES)}
        return {"model": self.model_dir.parent.name,
                "rule": f"at least {SERVE_MIN_SHARE:.0%} of the training faces found among the model's faces",
                "found_share": round(self.match.found_share, 4), **self.match.counts, "by_side": sides}


def serve_copy(dataset: Dataset, config: TrainConfig, models: list[Path], cache_dir: Path) -> ServedCopy | None:
    """The first shipped model with the same recipe (initial weights aside) covering the training faces, or None."""
    for model_dir in map(Path, models):
        shipped = json.loads((model_dir / "config.json").read_text())["config"]
        if {**shipped, "weights": None} != {**asdict(config), "weights": None}:
            continue
        # the match of these faces against the model's keys, cached by the hashes of both
        keys = model_dir / KEYS_FILE
        entry = Path(cache_dir) / f"facematch-{array_sha256(dataset.train.images)[:16]}-{file_sha256(keys)[:16]}.npz"
        if entry.exists():
            with np.load(entry) as z:
                match = FaceMatch(side=z["side"], exact=z["exact"], distance=z["distance"])
        else:
            match = match_faces(dataset.train.images, FaceKeys.load(model_dir))
            atomic_savez(entry, side=match.side, exact=match.exact, distance=match.distance)
        if match.found_share >= SERVE_MIN_SHARE:
            return ServedCopy(model_dir, match)
    return None
