"""The ImageNet VID class table, for the dataset code (it lives in :mod:`dff.classes`, below the models)."""
from dff.classes import VID_CLASSES, VID_WNIDS, WNID_TO_INDEX

__all__ = ["VID_CLASSES", "VID_WNIDS", "WNID_TO_INDEX"]
