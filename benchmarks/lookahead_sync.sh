#!/usr/bin/env bash
# Issue 30: what validating the slow weights changes, before and after the fix, paired:
#
#     git worktree add /tmp/before <commit before the fix>; ln -s "$PWD/.venv" /tmp/before/.venv
#     bash benchmarks/lookahead_sync.sh /tmp/before [SEEDS]     # SEEDS: default "42 1"; AFTER=<checkout> to time another
#
# 1. README command 1's experiment (the bundled sample: 9 steps an epoch, k=5);
# 2. ISIC 2017 (configs/isic2017.yaml) with configs/cpu_hour.yaml's recipe at batch 24 (1,600 training
#    images a fold: 66 steps an epoch, 66 % 5 = 1), scaled to 96 px and 6 epochs, one run per seed;
# then `python -m pipeline cv --baseline` of each pair (grouped bootstrap, paired). Runs one at a time:
# run it alone (two cores). Wall times go to $OUT/wall.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$(cd "$1" && pwd)
SEEDS=${2:-42 1}
AFTER=$(cd "${AFTER:-$PWD}" && pwd)  # the checkout with the fix: this one unless AFTER is set
OUT=${OUT:-$PWD/oof/lookahead_sync}
mkdir -p "$OUT"
run() {  # run CHECKOUT NAME ARGS...: train.py in that checkout, into $OUT/NAME
    local dir=$1 name=$2; shift 2
    local t0=$SECONDS
    (cd "$dir" && .venv/bin/python train.py "$@" output_dir="$OUT" name="$name") > "$OUT/$name.log" 2>&1
    printf '%s\t%s\n' "$name" $((SECONDS - t0)) >> "$OUT/wall.tsv"
}
run "$BEFORE" sample_before
run "$AFTER" sample_after
RECIPE=(--config configs/isic2017.yaml --config configs/cpu_hour.yaml model.image_size=96 train.epochs=6
        train.batch_size=24)
for seed in $SEEDS; do
    run "$BEFORE" "isic_before_s$seed" "${RECIPE[@]}" train.seed="$seed"
    run "$AFTER" "isic_after_s$seed" "${RECIPE[@]}" train.seed="$seed"
done
PY=.venv/bin/python
"$PY" -m pipeline cv "$OUT/sample_before" "$OUT/sample_after" --baseline sample_before --no-plot --out "$OUT/cmp_sample"
for seed in $SEEDS; do
    "$PY" -m pipeline cv "$OUT/isic_before_s$seed" "$OUT/isic_after_s$seed" --baseline "isic_before_s$seed" \
        --no-plot --out "$OUT/cmp_isic_s$seed"
done
cat "$OUT/wall.tsv"
