#!/usr/bin/env bash
# Issue 18: the diagnosis head on ISIC 2017 (train split, the recipe's 5 folds and budget:
# configs/cpu_hour.yaml), against the binary recipe. One run per line of RUNS (name, then overrides);
# each is train.py then infer.py (the val split, scored once at the end by benchmarks/diagnosis_table.py).
#
#     bash benchmarks/diagnosis.sh                 # every run below, in order (resumes: finished folds are kept)
#     RUNS="aux1" bash benchmarks/diagnosis.sh     # one of them
#     FOLDS=0,1 RUNS="bin aux1" bash benchmarks/diagnosis.sh   # some folds only (infer.py with those)
#     SEED=7 RUNS="bin aux1" bash benchmarks/diagnosis.sh      # a second seed: runs bin_s7, aux1_s7
#     OMP_NUM_THREADS=1 RUNS=aux1 bash benchmarks/diagnosis.sh & OMP_NUM_THREADS=1 RUNS=aux05 bash benchmarks/diagnosis.sh
#                                                  # two runs side by side, a core each (1.2x the throughput of 2 cores for one)
#     .venv/bin/python benchmarks/diagnosis_table.py               # the table (pipeline.cv's intervals); saves the
#                                                  # runs' predictions to benchmarks/diagnosis_preds/ (committed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=oof/diag
declare -A SETS=(
  [bin]="train.aux_weight=0 model.predict=binary"   # the recipe before issue 18 adopted the head
  [aux1]="train.aux_weight=1 model.predict=mean"
  [aux05]="train.aux_weight=0.5 model.predict=mean"
  [aux2]="train.aux_weight=2 model.predict=mean"
)
for run in ${RUNS:-bin aux1 aux05 aux2}; do
  name=$run${SEED:+_s$SEED}
  # train.patience=3: the recipe as these runs began (issue 17 raised it to 5); the runs stay comparable
  CFG=(--config configs/isic2017.yaml --config configs/cpu_hour.yaml train.patience=3 name=$name output_dir=$OUT
       data.cache_dir=$OUT/cache ${SETS[$run]} ${SEED:+train.seed=$SEED})
  t0=$SECONDS
  "$PY" train.py "${CFG[@]}" ${FOLDS:+--folds $FOLDS}
  t1=$SECONDS
  "$PY" infer.py "${CFG[@]}" ${FOLDS:+--allow-missing-folds}
  t2=$SECONDS
  printf '%s\t%s\t%s\n' "$name" $((t1 - t0)) $((t2 - t1)) >> $OUT/wall.tsv
done
