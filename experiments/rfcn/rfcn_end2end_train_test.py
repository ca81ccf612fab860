"""Train the per-frame R-FCN baseline end to end, then test and evaluate it on the config's test list.

    python experiments/rfcn/rfcn_end2end_train_test.py --cfg experiments/rfcn/cfgs/X.yaml [flags]
    torchrun --nproc_per_node 4 experiments/rfcn/rfcn_end2end_train_test.py --cfg ...   (4 GPUs, as the reference)

Flags beyond the reference's ``--cfg``: ``--resume --from-scratch --init PATH --frequent N --accumulate K
--amp {bf16,fp16} --max-iters N --num-workers N --seed N --save-every N --no-mxnet --no-test`` and the
test script's ``--thresh --ignore-cache --max-videos`` (``--help`` lists them all).
"""
import sys

from dff.train.trainer import run_train_test

if __name__ == "__main__":
    sys.exit(run_train_test(sys.argv[1:], "rfcn", prog="rfcn_end2end_train_test.py"))
