"""A dataset's class list: the ids its annotations use and the names people read, background first.

An ILSVRC2015-style root may carry ``classes.txt`` (docs/custom_data.md): one class per line, in class
index order, ``<id> [display name]`` where ``<id>`` is what the XML ``<name>`` holds (a single token) and
the display name (the rest of the line, spaces allowed) defaults to the id. Without the file the root is
ImageNet VID: the 30 classes by wnid, named as the reference names them.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Sequence

from dff.classes import BACKGROUND, VID_CLASSES, VID_WNIDS
from dff.utils.io import atomic_write_text

__all__ = ["CLASSES_FILE", "ClassList", "VID_CLASS_LIST", "read_class_file", "class_list_of_root",
           "write_class_file"]

CLASSES_FILE = "classes.txt"


class ClassList(NamedTuple):
    """``ids`` (annotation ids, e.g. wnids) and ``names`` (display names), both with the background at 0."""
    ids: tuple[str, ...]
    names: tuple[str, ...]

    @classmethod
    def from_lists(cls, ids: Sequence[str], names: Sequence[str] | None = None, *, source: str = "class list"
                   ) -> "ClassList":
        """Validate and build from the foreground ``ids`` (and ``names``, default the ids)."""
        ids = [str(i) for i in ids]
        names = [str(n) for n in (names if names is not None else ids)]
        if not ids:
            raise ValueError(f"{source}: no class")
        if len(names) != len(ids):
            raise ValueError(f"{source}: {len(ids)} class ids but {len(names)} names")
        for what, seq in (("id", ids), ("name", names)):
            seen: set[str] = set()
            for x in seq:
                if x in seen:
                    raise ValueError(f"{source}: class {what} {x!r} is listed twice")
                if x == BACKGROUND or not x.strip():
                    raise ValueError(f"{source}: {x!r} cannot be a class {what}")
                seen.add(x)
        return cls((BACKGROUND, *ids), (BACKGROUND, *names))

    @property
    def id_to_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.ids) if i > 0}

    @property
    def is_vid(self) -> bool:
        return self.ids == VID_WNIDS and self.names == VID_CLASSES


VID_CLASS_LIST = ClassList(VID_WNIDS, VID_CLASSES)


def read_class_file(path: str) -> ClassList:
    """Parse a ``classes.txt`` (see the module docstring); errors name the file and line."""
    ids: list[str] = []
    names: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.strip().split(None, 1)
            if not parts or parts[0].startswith("#"):
                continue
            ids.append(parts[0])
            names.append(parts[1].strip() if len(parts) > 1 else parts[0])
    return ClassList.from_lists(ids, names, source=path)


def class_list_of_root(root: str) -> ClassList:
    """The class list of an ILSVRC2015-style root: its ``classes.txt``, else the 30 VID classes."""
    path = os.path.join(root, CLASSES_FILE)
    return read_class_file(path) if os.path.isfile(path) else VID_CLASS_LIST


def write_class_file(root: str, classes: ClassList) -> str:
    """Write ``root/classes.txt`` atomically (``<id> <name>`` lines, or the id alone when they agree)."""
    lines = [i if i == n else f"{i} {n}" for i, n in zip(classes.ids[1:], classes.names[1:])]
    path = os.path.join(root, CLASSES_FILE)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
