"""Test a trained DFF model (``<prefix>-<TEST.test_epoch>``, or ``--model PATH``) and evaluate it.

    python experiments/dff_rfcn/dff_rfcn_test.py --cfg experiments/dff_rfcn/cfgs/X.yaml [--thresh 1e-4]
        [--ignore-cache] [--key-interval 10] [--model PATH] [--device cuda] [--num-workers N]
"""
import sys

from dff.eval.tester import run_test

if __name__ == "__main__":
    sys.exit(run_test(sys.argv[1:], "dff", prog="dff_rfcn_test.py"))
