"""Train the per-frame segmentation network (DeepLab-like, docs/segmentation.md), then evaluate it (mIoU).

    python experiments/deeplab/deeplab_end2end_train_test.py --cfg experiments/deeplab/cfgs/X.yaml [flags]

The flags are the detection entry points' (``--help``): ``--set KEY=VALUE``, ``--resume``, ``--init PATH``,
``--accumulate K``, ``--max-iters N``, ``--no-test`` ...
"""
import argparse
import os
import sys

from dff.apps.cli import add_config_options, add_test_options, add_train_options, run_train_test


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=os.path.basename(__file__),
                                 description="Train per-frame segmentation, then evaluate it (mIoU).")
    add_config_options(ap)
    add_train_options(ap.add_argument_group("training"))
    add_test_options(ap.add_argument_group("testing"), "deeplab")
    return run_train_test(ap.parse_args(argv), "deeplab")


if __name__ == "__main__":
    sys.exit(main())
