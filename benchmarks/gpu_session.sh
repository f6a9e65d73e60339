#!/usr/bin/env bash
# Every GPU-side check and benchmark, for a machine with CUDA that cannot reach a package index.
#
#   benchmarks/gpu_session.sh OUT_DIR [STEP ...]
#
# Steps (all when none are named): tests, routing, supermodel, stacking, search, demo, amp;
# profile (ResNet-34's search step under the profiler), weights (the supermodel benchmark
# with the mixture folded into the weights), backbone (the supermodel benchmark with 1x1 heads),
# cudnn (it with cuDNN's benchmark mode), host (the mixture's host cost per call) and
# deploy (inference) run only when named.
# Each step's output goes to OUT_DIR/STEP.txt and to the terminal; a step that fails or runs past
# its time limit is reported and the next one runs. Wheels missing on the machine (lark, for
# one) are installed from ./.whl when that folder exists; see benchmarks/NOTES.md.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_session.sh OUT_DIR [STEP ...]}
shift
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests routing supermodel stacking search demo amp)
mkdir -p "$out"
: >"$out/summary.txt"
export PYTHONUNBUFFERED=1

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps .whl/*.whl || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'

run_step() {  # name, time limit in seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "=== $name"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - start)) s" >>"$out/summary.txt"
}

quick_search() {  # the demo model's quick search, once per mixed precision
    local run
    for amp in bf16 fp16; do
        run=$(mktemp -d)
        mtsc search examples/resnet_tiny.mtl --data shapes --out "$run" --quick --amp "$amp" \
            --no-progress || return 1
        echo "amp $amp: $(tr -d '\n ' <"$run/policy.json" | head -c 400)"
    done
}
export -f quick_search

for step in "${steps[@]}"; do
    case $step in
    tests) run_step tests 150 python3 -m pytest -m gpu -q -p no:cacheprovider ;;
    routing) run_step routing 200 python3 benchmarks/bench_routing.py ;;
    supermodel) run_step supermodel 300 python3 benchmarks/bench_supermodel.py --device cuda --steps 20 ;;
    weights) run_step weights 300 python3 benchmarks/bench_supermodel.py --device cuda --steps 20 \
        --mixing weights ;;
    profile) run_step profile 150 python3 benchmarks/bench_supermodel.py --device cuda \
        --models resnet34 --steps 5 --profile ;;
    backbone) run_step backbone 240 python3 benchmarks/bench_supermodel.py --device cuda \
        --steps 20 --heads conv1x1 ;;
    cudnn) run_step cudnn 400 python3 benchmarks/bench_supermodel.py --device cuda --steps 20 \
        --models resnet34 resnet_tiny --cudnn-benchmark ;;
    host) run_step host 90 python3 benchmarks/bench_routing.py --host-only ;;
    deploy) run_step deploy 120 python3 benchmarks/bench_deploy.py --device cuda ;;
    stacking) run_step stacking 100 python3 benchmarks/bench_stacking.py --device cuda ;;
    search) run_step search 240 python3 benchmarks/bench_search.py ;;
    demo) run_step demo 120 mtsc demo --quick --out "$(mktemp -d)/demo" --no-progress ;;
    amp) run_step amp 150 bash -c quick_search ;;
    *) echo "unknown step: $step" >&2 ;;
    esac
done
cat "$out/summary.txt"
