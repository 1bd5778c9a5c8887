"""Real-data benchmark: 5-fold CV on ISIC 2017 with ablations and a metadata-only baseline.

    .venv/bin/python benchmarks/isic2017.py                      # all variants, CPU-friendly size
    .venv/bin/python benchmarks/isic2017.py --variants full,no_meta --image-size 128 --epochs 8

Trains configs/isic2017.yaml (the challenge's 2,000-image train split, read from
../shared/data/isic2017) once per variant, each with one trick turned off, on the same folds, and
fits logistic regression and gradient boosting on the same meta features and folds. The full
pipeline is also trained with a second seed: the gap between the two is the noise that an
ablation's difference has to exceed. Prints the pooled OOF AUC table (and the mean of fold AUCs)
and writes it to benchmarks/isic2017_results.md.
Each variant is an ordinary experiment under oof/bench/, so an interrupted benchmark resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.core.config import load_config  # noqa: E402
from pipeline.report.cv import report  # noqa: E402
from pipeline.data.prepare import prepare  # noqa: E402
from pipeline.train.trainer import train  # noqa: E402

VARIANTS = {
    "full": [],
    "no_meta": ["model.use_meta=false"],
    "no_mixup": ["train.mixup_prob=0"],
    "no_lookahead": ["train.lookahead_k=1", "train.lookahead_alpha=1.0"],  # k=1, alpha=1: plain Adam
    "no_bias_init": ["train.bias_init=false"],
    "full_seed1": ["train.seed=1"],  # the full pipeline again, another training seed: the noise floor
}


def meta_baselines(cfg) -> dict:
    """Pooled OOF AUC of models that see only the meta features, on the pipeline's folds."""
    data = prepare(cfg)
    y = data.df[cfg.data.target_col].to_numpy()
    fold = data.df["fold"].to_numpy()
    out = {}
    models = {"meta only: logistic regression": lambda: LogisticRegression(max_iter=1000),
              "meta only: gradient boosting": lambda: HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05,
                                                                                      max_depth=3, random_state=0)}
    for name, make in models.items():
        pred = np.zeros(len(y))
        for k in range(cfg.folds.n_folds):
            tr, va = fold != k, fold == k
            pred[va] = make().fit(data.meta[tr], y[tr]).predict_proba(data.meta[va])[:, 1]
        out[name] = {"pooled_auc": roc_auc_score(y, pred),
                     "mean_auc": np.mean([roc_auc_score(y[fold == k], pred[fold == k])
                                          for k in range(cfg.folds.n_folds)]), "minutes": 0.0}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--output-dir", default="oof/bench")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "isic2017_results.md"))
    args = p.parse_args()
    config = ROOT / "configs" / "isic2017.yaml"
    base = [f"model.image_size={args.image_size}", f"train.epochs={args.epochs}", f"output_dir={args.output_dir}"]
    cfg = load_config(config, base)
    if not Path(cfg.data.root).exists():
        print(f"{cfg.data.root} not found: the ISIC 2017 data is not on this machine", file=sys.stderr)
        return 1
    rows = {}
    for variant in args.variants.split(","):
        cfg = load_config(config, base + VARIANTS[variant] + [f"name=isic2017_{variant}_{args.image_size}px_{args.epochs}ep"])
        start = time.time()
        train(cfg)
        # Training minutes summed over the invocations that trained this variant (it resumes).
        spent = cfg.exp_dir / "bench_minutes.json"
        minutes = (json.loads(spent.read_text()) if spent.exists() else 0.0) + (time.time() - start) / 60
        spent.write_text(json.dumps(minutes))
        rows[variant] = {**report(cfg.exp_dir, plot=variant == "full"), "minutes": minutes}
    rows.update(meta_baselines(load_config(config, base)))
    full = rows.get("full", {}).get("pooled_auc")
    lines = [f"ISIC 2017 train split (2,000 images, 18.7% melanoma), 5-fold CV, tf_efficientnet_lite0 "
             f"(offline ImageNet weights), {args.image_size} px, up to {args.epochs} epochs",
             "", "| variant | pooled OOF AUC | mean fold AUC | vs full | minutes |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        delta = f"{r['pooled_auc'] - full:+.4f}" if full is not None and name != "full" else ""
        lines.append(f"| {name} | {r['pooled_auc']:.4f} | {r['mean_auc']:.4f} | {delta} | {r['minutes']:.1f} |")
    text = "\n".join(lines)
    print(text)
    Path(args.results).write_text(text + "\n")
    print(f"written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
