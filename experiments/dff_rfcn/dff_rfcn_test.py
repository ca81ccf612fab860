"""Test a trained DFF model (``<prefix>-<TEST.test_epoch>``, or ``--model PATH``) and evaluate it.

    python experiments/dff_rfcn/dff_rfcn_test.py --cfg experiments/dff_rfcn/cfgs/X.yaml [--thresh 1e-4]
        [--ignore-cache] [--key-interval 10] [--model PATH] [--device cuda] [--num-workers N] [--set KEY=VALUE ...]
"""
import argparse
import os
import sys

from dff.apps.cli import add_config_options, add_test_options, add_test_script_options, run_test


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=os.path.basename(__file__), description="Test a trained DFF model on the test "
                                 "list of the config and evaluate (ImageNet VID mAP).")
    add_config_options(ap)
    add_test_options(ap, "dff")
    add_test_script_options(ap)
    return run_test(ap.parse_args(argv), "dff")


if __name__ == "__main__":
    sys.exit(main())
