"""One entry to the datasets: ``dataset.format`` picks the reader, the rest of the code sees one interface.

Both readers give the same roidb entries (:mod:`dff.dataset.imagenet_vid`'s docstring), the same test
videos (:class:`dff.dataset.videos.TestVideo`), the same evaluation annotations and a
:class:`~dff.dataset.classlist.ClassList` (``.class_list``): after reading, the code paths are one.
"""
from __future__ import annotations

import os
from typing import Any

from dff.classes import format_class_diff
from dff.config import DATASET_FORMATS, set_class_names
from dff.dataset.cityscapes import CityscapesVideo
from dff.dataset.classlist import ClassList, class_list_of_root
from dff.dataset.cocovid import CocoVideo, cocovid_class_list
from dff.dataset.imagenet_vid import ImageNetVID, missing_dataset_message

__all__ = ["image_set_name", "open_dataset", "data_class_list", "adopt_class_list", "check_class_list", "ClassListMismatch"]


class ClassListMismatch(ValueError):
    """A model's class list is not the data's; the message shows both."""


def image_set_name(image_set: str) -> str:
    """An image set as a file or folder name: ``+`` -> ``_``, without the ``.json`` of COCO-video files."""
    return "_".join(p[:-5] if p.endswith(".json") else p for p in str(image_set).split("+"))


def open_dataset(cfg: Any, image_set: str, *, verbose: bool = True) -> ImageNetVID | CocoVideo | CityscapesVideo:
    """The reader of ``cfg.dataset.format`` for ``image_set`` (``+``-joined list names, JSON files for
    ``cocovid``, splits for ``cityscapes``) under ``dataset.dataset_path``. Raises ``FileNotFoundError`` naming
    the path and the fix."""
    fmt = str(cfg.dataset.format)
    if fmt not in DATASET_FORMATS:
        raise ValueError(f"dataset.format: {fmt!r} is not one of {', '.join(DATASET_FORMATS)}")
    path = str(cfg.dataset.dataset_path)
    if not os.path.isdir(path):
        raise FileNotFoundError(missing_dataset_message(path))
    if fmt == "cocovid":
        return CocoVideo(image_set, path, verbose=verbose)
    if fmt == "cityscapes":
        return CityscapesVideo(image_set, path, verbose=verbose)
    return ImageNetVID(image_set, path, cache_dir=os.path.join(str(cfg.dataset.root_path), "cache"), verbose=verbose)


def data_class_list(cfg: Any, image_set: str) -> ClassList:
    """The class list of ``image_set`` without reading its annotations: a root's ``classes.txt`` (else the 30
    VID classes), or the categories of the first COCO-video file."""
    path = str(cfg.dataset.dataset_path)
    if not os.path.isdir(path):
        raise FileNotFoundError(missing_dataset_message(path))
    if str(cfg.dataset.format) == "cocovid":
        first = str(image_set).split("+")[0]
        return cocovid_class_list(os.path.join(path, first if first.endswith(".json") else first + ".json"))
    if str(cfg.dataset.format) == "cityscapes":
        return CityscapesVideo(image_set, path, verbose=False).class_list
    return class_list_of_root(path)


def adopt_class_list(cfg: Any, classes: ClassList, source: str) -> list[str]:
    """Training: the config takes the data's class list (``dataset.CLASSES`` / ``NUM_CLASSES``) and every
    checkpoint stores it. A ``dataset.CLASSES`` given in the config must be the data's."""
    if cfg.dataset.CLASSES and list(cfg.dataset.CLASSES) != list(classes.names[1:]):
        raise ClassListMismatch("dataset.CLASSES does not match the data: "
                                + format_class_diff(cfg.dataset.CLASSES, classes.names, "the config", source))
    return set_class_names(cfg, classes.names)


def check_class_list(model_names: tuple[str, ...], classes: ClassList, model_source: str, data_source: str) -> None:
    """Testing: a model only evaluates data with its own class list (same names, same order)."""
    if tuple(model_names) != tuple(classes.names):
        raise ClassListMismatch("the model's classes are not the data's: "
                                + format_class_diff(model_names, classes.names, model_source, data_source)
                                + ". Test on data with the model's classes, or fine-tune it on this data "
                                "(--init; the class-dependent layers are re-initialised)")
