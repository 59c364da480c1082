#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one call on a GPU machine: install this checkout, then the
# pretraining benchmarks, the most important first, each skipped when the time left (deadline, seconds from
# now, default 540) is under its estimate. One JSON line per benchmark in $OUT/results.jsonl, logs in
# $OUT/log.txt. Wheels in .whl/ (packages the machine lacks) are installed first. `which` picks benchmarks by
# number (`7-12`, `1,9`; default all), to finish a list an earlier call ran out of time for.
#     bash benchmarks/gpu_pretrain.sh [deadline_s] [peak_tflops] [which]
set -u
OUT=${OUT:-/tmp/multimae-gpu}
mkdir -p "$OUT"
deadline=$(( $(date +%s) + ${1:-540} ))
peak=${2:-782}
which=${3:-1-99}
index=0
py=python3
if compgen -G ".whl/*.whl" >/dev/null; then $py -m pip install -q --no-index --no-deps .whl/*.whl >>"$OUT/log.txt" 2>&1; fi
$py -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$OUT/log.txt" 2>&1
nvidia-smi -L
$py -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"

chosen() {  # chosen N: is benchmark N in $which?
    local part
    for part in ${which//,/ }; do
        if [[ $part == *-* ]]; then
            (( $1 >= ${part%-*} && $1 <= ${part#*-} )) && return 0
        elif (( $1 == part )); then
            return 0
        fi
    done
    return 1
}

run() {  # run SECONDS_NEEDED SCRIPT ARGS...
    local need=$1
    shift
    index=$(( index + 1 ))
    chosen "$index" || return
    local left=$(( deadline - $(date +%s) ))
    if (( left < need )); then
        echo "skipped ($left s left): $*" | tee -a "$OUT/log.txt"
        return
    fi
    echo "== $* ($left s left)" >>"$OUT/log.txt"
    local start=$(date +%s)
    timeout "$left" $py "$@" 2>>"$OUT/log.txt" | tee -a "$OUT/results.jsonl"
    echo "   took $(( $(date +%s) - start )) s" >>"$OUT/log.txt"
}

scenes() {  # scenes DIR FORMAT: the loop's dataset, rendered once for the loop benchmarks that use it
    [[ -d $1 ]] || $py -m multimae_cli data synth --out "$1" --n 16384 --size 256 --workers "$(nproc)" \
        --rgb-format "$2" --quiet >>"$OUT/log.txt" 2>&1
}

bench=benchmarks/pretrain_throughput.py
loop=benchmarks/pretrain_loop.py
jpg=/tmp/multimae-scenes-jpg
png=/tmp/multimae-scenes-png
run 150 $bench --compile --floor --compare-fp32 --peak-tflops "$peak"
run 120 $bench --compile --compile-mode reduce-overhead --floor --peak-tflops "$peak"
run 40 $bench --floor --peak-tflops "$peak"
run 100 $bench --compile --ablate model-only-compile --ablate conv-patch-embed --peak-tflops "$peak"
run 80 $bench --compile --ablate model-only-compile --peak-tflops "$peak"
run 40 $bench --ablate conv-patch-embed --peak-tflops "$peak"
chosen 7 || chosen 10 && scenes $jpg jpg
run 100 $loop --compile --compile-mode reduce-overhead --batch 256 --data $jpg --steps 150
run 60 $bench --compile --compile-mode reduce-overhead --from-files --peak-tflops "$peak"
run 40 benchmarks/loader.py --device cuda --workers 15 --batch 64 --n 4096 --rounds 1 --rgb-format jpg
run 100 $loop --compile --batch 256 --data $jpg --steps 150
run 60 $bench --compile --peak-tflops "$peak"
run 40 benchmarks/loader.py --device cuda --workers 15 --batch 64 --n 4096 --rounds 1 --rgb-format png
chosen 13 || chosen 14 && scenes $png png
run 100 $loop --compile --compile-mode reduce-overhead --batch 256 --data $png --steps 150
run 100 $loop --compile --batch 256 --data $png --steps 150
run 80 $bench --compile --activation-checkpointing --peak-tflops "$peak"
echo "done"
tail -5 "$OUT/log.txt"
