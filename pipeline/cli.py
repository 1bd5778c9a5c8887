"""Command-line entry points shared by train.py and infer.py: options, then section.key=value overrides."""
from __future__ import annotations

import argparse
import os
import sys

from . import config as C


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, epilog=C.help_text(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", help="YAML experiment file; repeat it to combine files, later "
                   "ones overriding earlier ones (default: the code defaults, i.e. the bundled sample)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return p


def load(args) -> C.Config:
    return C.load_config(args.config, args.overrides)


def parse_ints(text: str | None, option: str = "--folds") -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise C.ConfigError(f"{option} expects comma-separated integers such as 0,2, got {text!r}") from None


def guarded(main) -> int:
    """``main()``'s exit code, with the pipeline's own errors (wrong input: pipeline.errors) turned
    into one line on stderr and exit code 2. Any other exception is a bug: its traceback is shown."""
    from .errors import PipelineError
    try:
        return main() or 0
    except PipelineError as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
            print(f"error: {e}", file=sys.stderr)
        return 2


def run(main) -> None:
    """Exit with ``guarded(main)``'s code; Ctrl-C exits 130."""
    from .errors import Interrupted
    try:
        sys.exit(guarded(main))
    except (Interrupted, KeyboardInterrupt):
        print("stopped; run the same command again to resume", file=sys.stderr)
        sys.exit(130)


def train_main(argv=None):
    p = parser("Train the folds of an experiment: OOF predictions, CV report (and, when all folds are "
               "done, nothing else to run but infer.py).")
    p.add_argument("--folds", help="comma-separated folds to train, e.g. 0,2 (default: all)")
    p.add_argument("--force", action="store_true", help="retrain finished folds / overwrite a different experiment")
    p.add_argument("--seeds", help="comma-separated training seeds, e.g. 1,2,3: one experiment each, named "
                                   "<name>_seed<k>, then compared (the seed-to-seed noise, measured)")
    args = p.parse_intermixed_args(argv)
    cfg = load(args)
    folds, seeds = parse_ints(args.folds), parse_ints(args.seeds, "--seeds")
    runs = [C.with_overrides(C.from_dict(C.to_dict(cfg)), [f"train.seed={s}", f"name={cfg.name}_seed{s}"])
            for s in seeds] if seeds else [cfg]
    from . import distributed
    from .cv import compare, report
    from .trainer import train
    dist = distributed.init()  # torchrun: join its process group
    try:
        oofs = [train(run, folds, force=args.force, dist=dist) for run in runs]
    finally:
        distributed.shutdown(dist)
    for run, oof in zip(runs, oofs):
        if not oof.empty:
            report(run.exp_dir)
    if len(runs) > 1 and all(not oof.empty for oof in oofs):
        compare([run.exp_dir for run in runs], plot=False)


def infer_main(argv=None):
    p = parser("Predict the test set with every trained fold of an experiment and write submission.csv.")
    p.add_argument("--allow-missing-folds", action="store_true", help="use the folds that exist")
    args = p.parse_intermixed_args(argv)
    cfg = load(args)
    from .infer import make_submission
    # data.* overrides also redirect the trained experiment's test set (its saved config holds the rest)
    make_submission(cfg, allow_missing_folds=args.allow_missing_folds or None,
                    data_overrides=[o for o in args.overrides if o.strip().startswith("data.")])
