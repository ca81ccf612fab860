"""Convert a dataset between the ILSVRC2015 VID layout and the COCO-video format, or from MOT-challenge folders.

    python tools/convert_dataset.py SRC DST --to {cocovid,vid} [--image-sets A,B] [--split NAME]
                                    [--class-name NAME | --mot-classes 1=pedestrian,3=car] [--no-progress]

SRC: an ILSVRC2015-style root (Data/, Annotations/, ImageSets/, optional classes.txt), a COCO-video .json
(file names relative to its folder), or a folder of videos / frame folders with MOT-challenge annotations.

    --to cocovid  VID root -> DST/<list>.json per ImageSets list (or DST.json for one list);
                  MOT folder -> DST/<SRC name>.json (or DST.json), video files decoded to <DST folder>/frames/
    --to vid      COCO-video .json -> a new ILSVRC2015-style root DST (images hard-linked)

Bad data is reported and skipped, with a summary at the end; a missing SRC (or another unusable input)
exits with 2 and one line. Rules, ids and what is lossy: dff.dataset.convert.
"""
from __future__ import annotations

import argparse
import sys

from dff.dataset.convert import run_conversion


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="ILSVRC2015-style root, COCO-video .json, or MOT-style folder")
    ap.add_argument("dst", help="output: a folder (or a .json path) for cocovid, a new root for vid")
    ap.add_argument("--to", required=True, choices=("cocovid", "vid"), help="output format")
    ap.add_argument("--image-sets", default=None,
                    help="VID -> cocovid: comma-separated ImageSets lists to convert (default: all)")
    ap.add_argument("--split", default=None, help="cocovid -> VID: split folder name (default: the JSON's stem)")
    ap.add_argument("--class-name", default="object", help="MOT: the one class's name (default %(default)s)")
    ap.add_argument("--mot-classes", default=None,
                    help="MOT: classes by MOT class number (column 8), e.g. 1=pedestrian,3=car; other rows dropped")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return run_conversion(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
