"""Test a trained R-FCN model (``<prefix>-<TEST.test_epoch>``, or ``--model PATH``) and evaluate it.

    python experiments/rfcn/rfcn_test.py --cfg experiments/rfcn/cfgs/X.yaml [--thresh 1e-3] [--ignore-cache]
        [--model PATH] [--device cuda] [--num-workers N]
"""
import sys

from dff.eval.tester import run_test

if __name__ == "__main__":
    sys.exit(run_test(sys.argv[1:], "rfcn", prog="rfcn_test.py"))
