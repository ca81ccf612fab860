#!/bin/bash
# Everything that needs a GPU, in one run: build the CUDA operators for this GPU, the CUDA tests
# (compiled operators against the CPU oracle, the fast path against float32), the fast-path check,
# operator timings, and the DFF vs per-frame benchmark (fast path and plain float32, 600x1000,
# ResNet-101), the resolution table, and the speed/accuracy curve of the embedded model.
#
#   bash tools/gpu_check.sh OUT_DIR [REFERENCE_DIR] [FRAMES_DIR]
#
# REFERENCE_DIR: the MXNet fixtures (default tests/fixtures/reference); FRAMES_DIR: JPEG frames of a VID
# video (default ../shared/data/ILSVRC2015_val_00007010). Each step has its own time limit and log
# in OUT_DIR; a failed step is reported and the next one runs. The exit status counts failed steps.
# GPU_STEPS="build tests ..." runs only the named steps.
set -u
OUT=${1:?usage: bash tools/gpu_check.sh OUT_DIR [REFERENCE_DIR] [FRAMES_DIR]}
REF=${2:-tests/fixtures/reference}
FRAMES=${3:-../shared/data/ILSVRC2015_val_00007010}
CFG=experiments/dff_rfcn/cfgs/resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DFF_REFERENCE_DIR="$REF"
failed=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    if [ -n "${GPU_STEPS:-}" ] && ! [[ " $GPU_STEPS " == *" $name "* ]]; then return; fi
    local t0=$SECONDS
    echo "== $name: $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
    [ $rc -eq 0 ] || failed=$((failed + 1))
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__)"

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
step build 300 $PY -m dff.ops.build --force
step tests 300 $PY -m pytest -q -rs tests/test_ops_cuda.py tests/test_nms_fixed.py tests/test_proposal.py tests/test_fastpath.py \
    -k "cuda or CUDA or test_proposal or nms"
step bench_fp16 300 $PY tools/benchmark.py --cfg $CFG --video "$FRAMES" --frames 144 --key-intervals 1,2,5,10,20 \
    --scale 600,1000 --device cuda --fast fp16 --json "$OUT/bench_r101_fp16.json" --profile "$OUT/profile_r101_fp16.txt"
step bench_plain 300 $PY tools/benchmark.py --cfg $CFG --video "$FRAMES" --frames 60 --key-intervals 1,10 \
    --scale 600,1000 --device cuda --fast none --json "$OUT/bench_r101_plain.json"
step check_fastpath 300 $PY tools/check_fastpath.py "$REF" --device cuda --amp "${CHECK_AMP:-none,fp16,bf16}"
if [ -d data/synthetic_vid ]; then
    for f in fp16 none; do
        step "eval_$f" 300 $PY tools/benchmark.py --cfg experiments/dff_rfcn/cfgs/dff_rfcn_synthetic_tiny.yaml \
            --model data/models/dff_rfcn_synthetic_tiny.pth --frames 60 --key-intervals 1,10 --device cuda \
            --fast $f --no-end-to-end --eval --json "$OUT/curve_tiny_$f.json"
    done
fi
step bench_ops 200 $PY tools/bench_ops.py --device cuda --json "$OUT/bench_ops_cuda.json"
for s in 360,600 800,1333; do
    step "bench_scale_${s%%,*}" 200 $PY tools/benchmark.py --cfg $CFG --video "$FRAMES" --frames 60 --key-intervals 1,10 \
        --scale $s --device cuda --fast fp16 --no-end-to-end --json "$OUT/bench_r101_scale_${s%%,*}.json"
done
step bench_fp32 300 $PY tools/benchmark.py --cfg $CFG --video "$FRAMES" --frames 144 --key-intervals 1,10 \
    --scale 600,1000 --device cuda --fast tf32 --json "$OUT/bench_r101_tf32fast.json"
echo "== $failed step(s) failed"
exit $failed
