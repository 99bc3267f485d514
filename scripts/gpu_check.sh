#!/usr/bin/env bash
# The CUDA check: on a CUDA machine without a network, in about 8 minutes, from the
# repository root with .gpu/ made by scripts/gpu_prepare.sh beside the checkout:
#
#     OUT=/some/folder bash scripts/gpu_check.sh
#
# It installs the wheels in .gpu/wheels, links .gpu as ../shared, and then, one step at a time
# (the timed ones alone on the machine, each with its own time limit), writes under $OUT:
#   bench_uci/bench.json  python -m benchmarks --cases uci --device cuda: the S5 UCI run
#                         against ../shared/bench/reference_loop.py (whole process and
#                         steady state)
#   bench_fashion/bench.json  --cases mnist: S2's model on Fashion-MNIST 60k, 4 folds x 5
#                         epochs, against the plain DataLoader loop
#   uci_graph.log         the S5 UCI run twice in one process with --cuda-graph: its last
#                         line is the JSON of python -m benchmarks --steady-state
#   folds/                kfold --dataset uci with 2 and with 10 folds (the default mode)
#   deterministic/        kfold --dataset uci --deterministic, twice
#   junit.xml             the test suite, with pytest-xdist over the machine's cores, at
#                         the same time as
#   experiments/          every experiment of experiments/index.toml for 1 epoch
#   gpu_check.json        scripts/gpu_summary.py: every step's exit status and time, the
#                         tests' counts, and each figure beside its limit
#   *.log                 each step's output
# Settings (environment), for a rerun of what failed or a rehearsal on the CPU:
#   GPU_CHECK_DEVICE=cpu         the same steps on the CPU
#   GPU_CHECK_TESTS="..."        pytest's selection (default: the whole suite)
#   GPU_CHECK_EXPERIMENTS="..."  experiment names (default: all of experiments/index.toml)
#   GPU_CHECK_MNIST_LIMIT=N      Fashion-MNIST rows in the bench (default: all 60,000)
#   GPU_CHECK_COMMIT=SHA         the commit checked, when the copy has no .git
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results}"
device="${GPU_CHECK_DEVICE:-cuda}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
mkdir -p "$OUT"
steps="$OUT/steps.jsonl"
: > "$steps"

# What the image lacks, installed beside it; digitcnn itself from this checkout
if [ ! -e ../shared ]; then ln -sfn "$PWD/.gpu" ../shared; fi
site=/tmp/digitcnn-gpu-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .gpu/wheels/*.whl > "$OUT/install.log" 2>&1
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
# the tests that read Fashion-MNIST look where Debian's package puts it
if [ ! -e /usr/share/datasets/fashion-mnist ] && [ -d .gpu/fashion-mnist ]; then
    mkdir -p /usr/share/datasets && ln -sfn "$PWD/.gpu/fashion-mnist" /usr/share/datasets/fashion-mnist
fi
{ nvidia-smi || true; python3 -m pip list 2>/dev/null; } > "$OUT/machine.log" 2>&1

# step NAME SECONDS COMMAND...: run COMMAND under a time limit into $OUT/NAME.log and record
# its exit status (124: stopped at the limit) and wall time in steps.jsonl
step() {
    local name="$1" limit="$2"
    shift 2
    local started rc
    started=$(date +%s%N)
    echo "== $name: $*" | tee -a "$OUT/check.log"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    printf '{"step": "%s", "rc": %d, "wall_ms": %d, "limit_s": %d, "command": "%s"}\n' \
        "$name" "$rc" "$(( ($(date +%s%N) - started) / 1000000 ))" "$limit" "$*" >> "$steps"
    echo "   rc=$rc" | tee -a "$OUT/check.log"
}

kfold=(python3 -m digitcnn.kfold --dataset uci --data-dir ../shared/data/optdigits
       --device "$device" --quiet --no-plots)
fashion=.gpu/fashion-mnist

# 1. The timed steps, alone on the machine
limit=()
if [ -n "${GPU_CHECK_MNIST_LIMIT:-}" ]; then limit=(--mnist-limit "$GPU_CHECK_MNIST_LIMIT"); fi
step bench_uci 150 python3 -m benchmarks --cases uci --device "$device" --repeats 1 \
    --out "$OUT/bench_uci"
step bench_fashion 240 python3 -m benchmarks --cases mnist --device "$device" --repeats 1 \
    --mnist-dir "$fashion" --mnist-epochs 5 "${limit[@]}" --out "$OUT/bench_fashion"
if [ "$device" = cuda ]; then  # the captured step (--cuda-graph), steady state only
    step uci_graph 90 python3 -m benchmarks --steady-state --extra --dataset uci \
        --scaler global --data-dir ../shared/data/optdigits --device cuda --cuda-graph
fi
for folds in 2 10; do
    step "folds$folds" 60 "${kfold[@]}" --folds "$folds" --out "$OUT/folds/$folds"
done
for run in 1 2; do
    step "deterministic$run" 60 "${kfold[@]}" --deterministic --out "$OUT/deterministic/$run"
done

# 2. Correctness: the suite and the experiments side by side (neither is timed)
parallel=()
if python3 -c "import xdist" 2>/dev/null; then  # pytest-xdist: in the CUDA image
    parallel=(-n "$(( $(nproc) > 12 ? 10 : $(nproc) / 2 + 1 ))")
fi
if python3 -c "import pytest_timeout" 2>/dev/null; then
    # a test that hangs fails alone, and the suite still ends inside the step's limit with
    # its junit.xml written (a suite stopped by the step's timeout writes none)
    parallel+=(--timeout=150)
fi
# shellcheck disable=SC2086  # a selection of several words
step tests 330 python3 -m pytest -q -p no:cacheprovider "${parallel[@]}" \
    --junitxml="$OUT/junit.xml" ${GPU_CHECK_TESTS:-} &
tests=$!
# shellcheck disable=SC2086
step experiments 330 python3 experiments/run_all.py --epochs 1 --no-readme --keep-going \
    --results "$OUT/experiments" ${GPU_CHECK_EXPERIMENTS:-} &
wait "$tests" $!

commit="${GPU_CHECK_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
python3 scripts/gpu_summary.py "$OUT" --device "$device" --commit "$commit" > "$OUT/gpu_check.json"
cat "$OUT/gpu_check.json"
