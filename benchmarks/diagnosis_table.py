"""Issue 18's table: the diagnosis head on ISIC 2017 against the binary recipe, after
``bash benchmarks/diagnosis.sh`` has trained its runs into oof/diag/.

    .venv/bin/python benchmarks/diagnosis_table.py [--runs bin aux1 ...]

For every run with the diagnosis head, one TTA pass of its folds' best.pt reads each OOF row out
all three ways (``model.predict``: the binary head, the melanoma class of the diagnosis head, their
mean) into oof/diag/modes/<run>_<mode>/oof.csv: the same weights, only the read-out differs (the
best epoch was chosen by the run's own ``model.predict``; that read-out must equal the run's own
oof.csv, and the largest difference is printed). Then ``python -m pipeline cv`` compares everything
with the first run as the baseline (bootstrap intervals, paired differences), and each run's
val-split AUC is scored once from its submission.csv.

Runs outlive the machine: every OOF table and submission read here is saved, without its labels,
to benchmarks/diagnosis_preds/<name>.csv and <name>_val.csv (committed). A run whose folder is gone
is rebuilt from them (the labels joined back from ISIC 2017's metadata.csv) into oof/diag/saved/,
so a later session can add a seed and compare it with these runs without training them again.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from pipeline import config as C  # noqa: E402
from pipeline import oof  # noqa: E402
from pipeline.checkpoints import predicting_model  # noqa: E402
from pipeline.cli import tune_process  # noqa: E402
from pipeline.cv import compare  # noqa: E402
from pipeline.engine import predict  # noqa: E402
from pipeline.experiment import saved_config, val_predictions_path  # noqa: E402
from pipeline.prepare import aux_head, eval_loader, oof_rows, prepare  # noqa: E402
from pipeline.stats import auc  # noqa: E402

OUT = ROOT / "oof" / "diag"
SAVED = ROOT / "benchmarks" / "diagnosis_preds"
METADATA = ROOT.parent / "shared" / "data" / "isic2017" / "metadata.csv"
ID, TARGET = "image_id", "melanoma"


def every_readout(model, melanoma: int):
    """``model.probability`` giving the three read-outs of C.PREDICT side by side, (N, 3): their TTA
    average is each read-out's own (the mean of two averages is the average of the means)."""
    def probability(logits: torch.Tensor) -> torch.Tensor:
        binary = torch.sigmoid(logits[:, 0])
        diagnosis = torch.softmax(logits[:, 1:], dim=1)[:, melanoma]
        return torch.stack([binary, diagnosis, (binary + diagnosis) / 2], dim=1)
    model.probability = probability
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
        pred = predict(every_readout(model, data.diagnosis.melanoma_index), eval_loader(cfg, data, idx), rt,
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


def save(exp: Path) -> None:
    """The run's OOF predictions (id, fold, pred) and val-split submission, labels left out."""
    SAVED.mkdir(exist_ok=True)
    oof.read(exp / "oof.csv")[[ID, "fold", "pred"]].to_csv(SAVED / f"{exp.name}.csv", index=False, float_format="%.8g")
    if (exp / "submission.csv").is_file():
        pd.read_csv(exp / "submission.csv").to_csv(SAVED / f"{exp.name}_val.csv", index=False, float_format="%.8g")


def restore(name: str) -> Path | None:
    """A saved run rebuilt as an OOF folder (labels from metadata.csv), or None when none is saved."""
    if not (SAVED / f"{name}.csv").is_file():
        return None
    saved = pd.read_csv(SAVED / f"{name}.csv", dtype={ID: "string"})
    labels = pd.read_csv(METADATA, dtype={ID: "string"}).set_index(ID)[TARGET]
    out = OUT / "saved" / name
    out.mkdir(parents=True, exist_ok=True)
    oof.write(out / "oof.csv", oof.table(oof.Layout(ID), saved[ID], None, saved["fold"],
                                         labels.loc[saved[ID]].to_numpy().astype(int), saved["pred"]))
    if (SAVED / f"{name}_val.csv").is_file():
        (out / "submission.csv").write_bytes((SAVED / f"{name}_val.csv").read_bytes())
    return out


def val_auc(exp: Path) -> str:
    """The val split's AUC from the run's submission (150 images, scored once)."""
    sub = exp / "submission.csv"
    if not sub.is_file():
        return ""
    s = pd.read_csv(sub, dtype={ID: "string"})
    meta = pd.read_csv(METADATA, dtype={ID: "string"}).set_index(ID)
    return f"{auc(meta.loc[s[ID], TARGET].to_numpy(), s[TARGET].to_numpy()):.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=["bin", "aux05", "aux1", "aux2"])
    args = p.parse_args()
    tune_process()
    runs, extra = [], []
    for r in args.runs:
        if (OUT / r / "oof.csv").is_file():
            modes = readouts(OUT / r)
            for d in [OUT / r, *modes]:
                save(d)
            runs.append(OUT / r)
            extra += modes
        elif (found := restore(r)) is not None:
            runs.append(found)
            extra += [d for m in C.PREDICT if (d := restore(f"{r}_{m}")) is not None]
        else:
            print(f"{r}: neither trained in {OUT / r} nor saved in {SAVED}: left out")
    compare([*runs, *extra], baseline=str(runs[0]), plot=False, out=OUT / "compare")
    print("\nval split (150 images, scored once): " + ", ".join(f"{r.name} {val_auc(r)}" for r in runs))


if __name__ == "__main__":
    main()
