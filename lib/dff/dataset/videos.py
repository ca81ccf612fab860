"""What a test set is, whatever its format: videos of frames in order, with the ids the results file uses."""
from __future__ import annotations

import dataclasses

__all__ = ["TestVideo"]


@dataclasses.dataclass
class TestVideo:
    """One video of a test set: its frames in order.

    ``indices`` (``"<video>/<frame:06d>"``) key the evaluation's annotations (the frame number after the
    last ``/`` finds a track's neighbours for the motion IoU); ``frame_ids`` are the results file's
    global frame ids, unique over the test set.
    """
    __test__ = False  # not a pytest test class

    name: str               # "val/ILSVRC2015_val_00000000"
    paths: list[str]        # absolute image paths
    frame_ids: list[int]    # global frame ids (results file, docs/design.md §6.1)
    indices: list[str]      # "<name>/<frame:06d>" (annotation / image-set index)
