#!/usr/bin/env bash
# Issue 31: what the cheaper paths cost in AUC on ISIC 2017 (configs/isic2017.yaml + configs/cpu_hour.yaml,
# scaled to 96 px, 6 epochs, batch 24, as benchmarks/lookahead_sync.sh), paired with python -m pipeline cv:
#
#     bash benchmarks/cheaper_paths.sh int8 EXP...          # each experiment's folds re-predict their OOF rows
#                                                           # with OpenVINO fp32 and int8 (tta_views.py, TTA x8, as the recipe)
#     bash benchmarks/cheaper_paths.sh freeze N SEED...     # train.freeze_stages=N, one run per seed, against
#                                                           # $BASE/isic_after_s<SEED> (the full fine-tune; run
#                                                           # it with N=0 to make it: freeze 0 SEED)
#
# Runs one at a time: run it alone (two cores). Outputs under $OUT (default oof/cheaper_paths); wall
# times in $OUT/wall.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-$PWD/oof/cheaper_paths}
BASE=${BASE:-$OUT}
mkdir -p "$OUT"
RECIPE=(--config configs/isic2017.yaml --config configs/cpu_hour.yaml model.image_size=96 train.epochs=6
        train.batch_size=24)
what=$1; shift
if [ "$what" = int8 ]; then
    for exp in "$@"; do
        for precision in fp32 int8; do
            t0=$SECONDS
            "$PY" benchmarks/tta_views.py "$exp" --views 8 --backend openvino --precision "$precision"
            printf '%s\t%s\n' "$(basename "$exp")_$precision" $((SECONDS - t0)) >> "$OUT/wall.tsv"
        done
        "$PY" -m pipeline cv "${exp}_tta8_openvino-fp32" "${exp}_tta8_openvino-int8" \
            --baseline "$(basename "$exp")_tta8_openvino-fp32" --no-plot --no-cam --out "$OUT/cmp_int8_$(basename "$exp")"
    done
elif [ "$what" = freeze ]; then
    n=$1; shift
    for seed in "$@"; do
        name=isic_freeze${n}_s$seed
        [ "$n" = 0 ] && name=isic_after_s$seed
        t0=$SECONDS
        "$PY" train.py "${RECIPE[@]}" train.seed="$seed" train.freeze_stages="$n" output_dir="$OUT" name="$name" \
            > "$OUT/$name.log" 2>&1
        printf '%s\t%s\n' "$name" $((SECONDS - t0)) >> "$OUT/wall.tsv"
        [ "$n" = 0 ] || "$PY" -m pipeline cv "$BASE/isic_after_s$seed" "$OUT/$name" --baseline "isic_after_s$seed" \
            --no-plot --no-cam --out "$OUT/cmp_freeze${n}_s$seed"
    done
else
    echo "usage: $0 int8 EXP... | freeze N SEED..." >&2; exit 2
fi
