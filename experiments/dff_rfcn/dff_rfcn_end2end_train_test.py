"""Train DFF (R-FCN + FlowNet) end to end, then test and evaluate it on the config's test list.

    python experiments/dff_rfcn/dff_rfcn_end2end_train_test.py --cfg experiments/dff_rfcn/cfgs/X.yaml [flags]
    torchrun --nproc_per_node 4 experiments/dff_rfcn/dff_rfcn_end2end_train_test.py --cfg ...   (4 GPUs, as the reference)

Flags beyond the reference's ``--cfg``: ``--set KEY=VALUE ...`` (config overrides), ``--resume --from-scratch
--init PATH --frequent N --accumulate K --amp {bf16,fp16} --max-iters N --num-workers N --seed N --save-every N
--no-mxnet --no-test`` and the test script's ``--thresh --ignore-cache --key-interval --max-videos``
(``--help`` lists them all).
"""
import argparse
import os
import sys

from dff.apps.cli import add_config_options, add_test_options, add_train_options, run_train_test


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=os.path.basename(__file__),
                                 description="Train DFF (R-FCN + FlowNet) end to end, then test and evaluate it.")
    add_config_options(ap)
    add_train_options(ap.add_argument_group("training"))
    add_test_options(ap.add_argument_group("testing"), "dff")
    return run_train_test(ap.parse_args(argv), "dff")


if __name__ == "__main__":
    sys.exit(main())
