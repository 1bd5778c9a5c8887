"""Runs that outlive the machine: a run's OOF predictions (id, fold, pred) and val-split submission
saved without labels into a committed folder, and rebuilt from it as an OOF folder (the labels joined
back from ISIC 2017's metadata.csv), so a later session can compare a new run with them without
training them again. Used by benchmarks/diagnosis_table.py and benchmarks/cpu_hour_seeds.py."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.experiment import oof

ROOT = Path(__file__).resolve().parent.parent
METADATA = ROOT.parent / "shared" / "data" / "isic2017" / "metadata.csv"
ID, TARGET = "image_id", "melanoma"


def save(exp: Path, saved: Path) -> None:
    """``exp``'s OOF predictions to ``saved/<name>.csv`` and its submission to ``saved/<name>_val.csv``."""
    saved.mkdir(exist_ok=True)
    oof.read(exp / "oof.csv")[[ID, "fold", "pred"]].to_csv(saved / f"{exp.name}.csv", index=False, float_format="%.8g")
    if (exp / "submission.csv").is_file():
        pd.read_csv(exp / "submission.csv").to_csv(saved / f"{exp.name}_val.csv", index=False, float_format="%.8g")


def restore(name: str, saved: Path, out: Path) -> Path | None:
    """The run ``name`` saved in ``saved`` rebuilt as the OOF folder ``out/name``; None when none is saved."""
    if not (saved / f"{name}.csv").is_file():
        return None
    rows = pd.read_csv(saved / f"{name}.csv", dtype={ID: "string"})
    labels = pd.read_csv(METADATA, dtype={ID: "string"}).set_index(ID)[TARGET]
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    oof.write(folder / "oof.csv", oof.table(oof.Layout(ID), rows[ID], None, rows["fold"],
                                            labels.loc[rows[ID]].to_numpy().astype(int), rows["pred"]))
    if (saved / f"{name}_val.csv").is_file():
        (folder / "submission.csv").write_bytes((saved / f"{name}_val.csv").read_bytes())
    return folder
