"""Issue 18's table: the diagnosis head on ISIC 2017 against the binary recipe, after
``bash benchmarks/diagnosis.sh`` has trained its runs into oof/diag/.

    .venv/bin/python benchmarks/diagnosis_table.py [--runs bin aux1 ...]

For every run with the diagnosis head, one TTA pass of its folds' best.pt reads each OOF row out
all three ways (``model.predict``: the binary head, the melanoma class of the diagnosis head, their
mean) into oof/diag/modes/<run>_<mode>/oof.csv: the same weights, only the read-out differs (the
best epoch was chosen by the run's own ``model.predict``; that read-out must equal the run's own
oof.csv, and the largest difference is printed). Then ``python -m pipeline cv`` compares each seed's
runs with that seed's ``bin`` (bootstrap intervals, paired differences; oof/diag/compare for seed 42,
oof/diag/compare_s7 for ``SEED=7`` runs named <run>_s7), an arm trained on several seeds is compared
with ``bin`` over the seeds (the mean of the per-seed differences, on the same replicates), and each
run's val-split AUC is scored once from its submission.csv.

Runs outlive the machine (benchmarks/saved_runs.py): every OOF table and submission read here is
saved, without its labels, to benchmarks/diagnosis_preds/<name>.csv and <name>_val.csv (committed). A
run whose folder is gone is rebuilt from them into oof/diag/saved/, so a later session can add a seed
and compare it with these runs without training them again.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.core import config as C  # noqa: E402
from pipeline.experiment import oof  # noqa: E402
from pipeline.train.checkpoints import predicting_model  # noqa: E402
from pipeline.train.process import tune_process  # noqa: E402
from pipeline.report.cv import compare  # noqa: E402
from pipeline.report.seeds import over_seeds  # noqa: E402
from pipeline.train.loop import predict  # noqa: E402
from pipeline.experiment.record import saved_config
from pipeline.experiment.oof import val_predictions_path  # noqa: E402
from pipeline.data.prepare import aux_head, eval_loader, prepare
from pipeline.experiment.oof import oof_rows  # noqa: E402
from pipeline.report.stats import auc  # noqa: E402
from saved_runs import ID, METADATA, TARGET, restore, save  # noqa: E402

OUT = ROOT / "oof" / "diag"
SAVED = ROOT / "benchmarks" / "diagnosis_preds"


def every_readout(model):
    """The model scoring every read-out side by side (its ``readouts``): their TTA average is each
    read-out's own (the mean of two averages is the average of the means)."""
    model.probability = model.readouts
    return model


def readouts(exp: Path) -> list[Path]:
    """The run's OOF rows read out every other way, from one pass of each finished fold's best.pt."""
    cfg = saved_config(exp / "config.yaml")
    cfg.output_dir, cfg.name = str(exp.parent), exp.name
    if not aux_head(cfg):
        return []
    outs = {m: OUT / "modes" / f"{exp.name}_{m}" for m in C.PREDICT if m != cfg.model.predict}
    if all((o / "oof.csv").is_file() for o in outs.values()):
        return list(outs.values())
    data = prepare(cfg)
    parts = {m: [] for m in C.PREDICT}
    for k in [k for k in range(cfg.folds.n_folds) if val_predictions_path(exp / f"fold{k}").is_file()]:
        idx = np.flatnonzero(data.df["fold"].to_numpy() == k)
        model, rt = predicting_model(cfg, data.meta.shape[1], exp / f"fold{k}", data.diagnosis)
        pred = predict(every_readout(model), eval_loader(cfg, data, idx), rt,
                       cfg.infer.tta, f"{exp.name} fold {k}, every read-out")
        for j, m in enumerate(C.PREDICT):
            parts[m].append(oof_rows(cfg, data, idx, pred[:, j]))
    own = pd.concat(parts[cfg.model.predict], ignore_index=True).set_index(ID)["pred"]
    written = oof.read(exp / "oof.csv").set_index(ID)["pred"]
    print(f"{exp.name}: its own read-out ({cfg.model.predict}) again, largest difference from its oof.csv "
          f"{np.abs(own.loc[written.index].to_numpy() - written.to_numpy()).max():.2e}")
    for m, out in outs.items():
        out.mkdir(parents=True, exist_ok=True)
        oof.write(out / "oof.csv", pd.concat(parts[m], ignore_index=True))
    return list(outs.values())


def val_auc(exp: Path) -> str:
    """The val split's AUC from the run's submission (150 images, scored once)."""
    sub = exp / "submission.csv"
    if not sub.is_file():
        return ""
    s = pd.read_csv(sub, dtype={ID: "string"})
    meta = pd.read_csv(METADATA, dtype={ID: "string"}).set_index(ID)
    return f"{auc(meta.loc[s[ID], TARGET].to_numpy(), s[TARGET].to_numpy()):.4f}"


def arm_and_seed(name: str) -> tuple[str, str]:
    """'aux05_s7' -> ('aux05', '_s7'); a name without a seed suffix is seed 42's: ('aux05', '')."""
    m = re.fullmatch(r"(.+?)(_s\d+)?", name)
    return m[1], m[2] or ""


def vs_bin_over_seeds(base: list[Path], arm: list[Path]) -> str:
    """The arm minus ``bin`` averaged over the seeds (``base[i]`` and ``arm[i]`` share a seed)."""
    o = over_seeds(base, arm)
    return (f"{arm_and_seed(arm[0].name)[0]} - bin over {o.seeds} seeds: pooled OOF AUC {o.arm:.4f} vs "
            f"{o.base:.4f}, difference {o.diff:+.4f} (95% {o.lo:+.4f} to {o.hi:+.4f}, share <= 0: {o.share:.3f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=["bin", "aux05", "aux1", "aux2"])
    args = p.parse_args()
    tune_process()
    runs, modes = {}, {}
    for r in args.runs:
        if (OUT / r / "oof.csv").is_file():
            modes[r] = readouts(OUT / r)
            for d in [OUT / r, *modes[r]]:
                save(d, SAVED)
            runs[r] = OUT / r
        elif (found := restore(r, SAVED, OUT / "saved")) is not None:
            runs[r] = found
            modes[r] = [d for m in C.PREDICT if (d := restore(f"{r}_{m}", SAVED, OUT / "saved")) is not None]
        else:
            print(f"{r}: neither trained in {OUT / r} nor saved in {SAVED}: left out")
    seeds = sorted({arm_and_seed(r)[1] for r in runs}, key=len)
    for seed in seeds:
        mine = sorted((r for r in runs if arm_and_seed(r)[1] == seed), key=lambda r: arm_and_seed(r)[0] != "bin")
        print(f"\n== seed {seed[2:] or 42}: {', '.join(mine)} ==")
        compare([runs[r] for r in mine] + [d for r in mine for d in modes[r]], baseline=str(runs[mine[0]]),
                plot=False, out=OUT / f"compare{seed}")
    for arm in dict.fromkeys(arm_and_seed(r)[0] for r in runs):
        both = [s for s in seeds if f"bin{s}" in runs and f"{arm}{s}" in runs]
        if arm != "bin" and len(both) > 1:
            print(vs_bin_over_seeds([runs[f"bin{s}"] for s in both], [runs[f"{arm}{s}"] for s in both]))
    print("\nval split (150 images, scored once): " + ", ".join(f"{r} {val_auc(d)}" for r, d in runs.items()))


if __name__ == "__main__":
    main()
