"""Command-line entry points shared by train.py and infer.py: options, then section.key=value overrides."""
from __future__ import annotations

import argparse
import os
import sys

from . import config as C


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, epilog=C.help_text(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML experiment file (default: the code defaults, i.e. the bundled sample)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return p


def load(args) -> C.Config:
    return C.load_config(args.config, args.overrides)


def parse_folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise C.ConfigError(f"--folds expects comma-separated integers such as 0,2, got {text!r}") from None


def run(main) -> None:
    """Turn the pipeline's own errors (wrong input: pipeline.errors) into one line on stderr and exit
    code 2; Ctrl-C into 130. Any other exception is a bug: its traceback is shown."""
    from .errors import Interrupted, PipelineError
    try:
        sys.exit(main() or 0)
    except PipelineError as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt):
        print("stopped; run the same command again to resume", file=sys.stderr)
        sys.exit(130)


def train_main(argv=None):
    p = parser("Train the folds of an experiment: OOF predictions, CV report (and, when all folds are "
               "done, nothing else to run but infer.py).")
    p.add_argument("--folds", help="comma-separated folds to train, e.g. 0,2 (default: all)")
    p.add_argument("--force", action="store_true", help="retrain finished folds / overwrite a different experiment")
    args = p.parse_intermixed_args(argv)
    cfg = load(args)
    from . import distributed
    from .cv import report
    from .trainer import train
    dist = distributed.init()  # torchrun: join its process group
    try:
        oof = train(cfg, parse_folds(args.folds), force=args.force, dist=dist)
    finally:
        distributed.shutdown(dist)
    if not oof.empty:
        report(cfg.exp_dir)


def infer_main(argv=None):
    p = parser("Predict the test set with every trained fold of an experiment and write submission.csv.")
    p.add_argument("--allow-missing-folds", action="store_true", help="use the folds that exist")
    args = p.parse_intermixed_args(argv)
    cfg = load(args)
    from .predict import make_submission
    # data.* overrides also redirect the trained experiment's test set (its saved config holds the rest)
    make_submission(cfg, allow_missing_folds=args.allow_missing_folds or None,
                    data_overrides=[o for o in args.overrides if o.strip().startswith("data.")])
