#!/usr/bin/env bash
# Issue 12, phase 1: which levers matter on ISIC 2017 (train split, 5 folds), screened at a small
# budget against the seed-to-seed noise. About 90 min alone on a 2-core CPU:
#
#     bash benchmarks/cpu_hour_search.sh            # then: bash benchmarks/cpu_hour_final.sh
#
# Reference: configs/isic2017.yaml at 64 px and 6 epochs (train.lr 5e-4, batch 32, TTA x4), two
# seeds. Every other run changes one thing. Wall seconds per command go to oof/cpuhour/wall.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=oof/cpuhour
mkdir -p $OUT
BASE=(--config configs/isic2017.yaml model.image_size=64 train.epochs=6 output_dir=$OUT)
timed() {  # timed NAME ARGS...: train.py with the base config and the overrides, wall time logged
    local name=$1; shift
    local t0=$SECONDS
    "$PY" train.py "${BASE[@]}" name="$name" "$@"
    printf '%s\t%s\n' "$name" $((SECONDS - t0)) >> $OUT/wall.tsv
}
timed ref --seeds 42,1                                   # the noise floor
timed px96_e6 model.image_size=96                        # image size at the same epochs
timed px128_e3 model.image_size=128 train.epochs=3       # size against epochs at about equal time
timed px64_e12 train.epochs=12                           # one longer run (against a blend of the two seeds)
timed lr1e-3 train.lr=1e-3
timed no_lookahead train.lookahead_k=1 train.lookahead_alpha=1
timed no_meta model.use_meta=false
timed aug_strong train.aug_scale=0.25 train.aug_color=0.2
timed drop_path0.25 model.drop_path_rate=0.25 model.head_dropout=0.5
timed batch16 train.batch_size=16
timed scratch_b0 model.backbone=efficientnet_b0 model.pretrained=none
# added after the runs above: the learning rate and Lookahead together, and 128 px at the better lr
timed lr2e-3 train.lr=2e-3
timed lr1e-3_no_lookahead train.lr=1e-3 train.lookahead_k=1 train.lookahead_alpha=1
timed px128_lr1e-3 model.image_size=128 train.lr=1e-3
# the small differences again with the reference's second seed (each against ref_seed1)
timed aug_strong_seed1 train.aug_scale=0.25 train.aug_color=0.2 train.seed=1
timed drop_path0.25_seed1 model.drop_path_rate=0.25 model.head_dropout=0.5 train.seed=1
timed batch16_seed1 train.batch_size=16 train.seed=1
# TTA views: the reference's checkpoints predict their validation rows again with 1, 2, 4, 8 views
"$PY" benchmarks/tta_views.py $OUT/ref_seed42 --views 1,2,4,8
# the cost of one epoch at 192 px (fold 0, its own cache), to size the recipe's epochs
"$PY" train.py --config configs/isic2017.yaml model.image_size=192 train.epochs=1 --folds 0 \
    output_dir=oof/cpuhour_probe name=probe192 data.cache_dir=oof/cpuhour_probe/cache192
cat oof/cpuhour_probe/probe192/fold0/log.csv
# the table: every run against the reference, with paired intervals; blends of the two seeds
RUNS=(ref_seed42 ref_seed1 px96_e6 px128_e3 px64_e12 lr1e-3 no_lookahead no_meta aug_strong drop_path0.25
      batch16 scratch_b0 lr2e-3 lr1e-3_no_lookahead px128_lr1e-3)
"$PY" -m pipeline cv "${RUNS[@]/#/$OUT/}" --baseline ref_seed42 --no-plot --out $OUT/compare
"$PY" -m pipeline cv $OUT/{ref_seed1,aug_strong_seed1,drop_path0.25_seed1,batch16_seed1} --baseline ref_seed1 \
    --no-plot --out $OUT/compare_seed1
"$PY" -m pipeline cv $OUT/lr1e-3 $OUT/px128_lr1e-3 --baseline lr1e-3 --no-plot --out $OUT/compare_px128
"$PY" -m pipeline cv $OUT/ref_seed42_tta{1,2,4,8} --baseline ref_seed42_tta4 --no-plot --out $OUT/compare_tta
"$PY" -m pipeline blend $OUT/ref_seed42 $OUT/ref_seed1 --name blend_seeds --method mean
"$PY" -m pipeline cv $OUT/px64_e12 $OUT/blend_seeds $OUT/ref_seed42 --baseline px64_e12 --no-plot \
    --out $OUT/compare_blend
