"""Command-line entry points: train.py, infer.py, ``python -m pipeline cv``, ``python -m pipeline blend``
and ``python -m pipeline sample`` each call one function here. Options, then section.key=value
overrides. Process-wide settings (``train.process.tune_process``) are made here, before the work
starts, never as a side effect of an import.
"""
from __future__ import annotations

import argparse
import sys

from pipeline.core import disk
from pipeline.core.config import from_dict, help_text, load_config, to_dict, with_overrides
from pipeline.core.errors import ConfigError, Interrupted, first_few, guarded
from pipeline.core.given import check_given, given_keys


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, epilog=help_text(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", help="YAML experiment file; repeat it to combine files, later "
                   "ones overriding earlier ones (default: the code defaults, i.e. the bundled sample)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return p


def parse_ints(text: str | None, option: str = "--folds", example: str = "0,2") -> list[int] | None:
    """A comma-separated list flag's integers, duplicates dropped (in their order); None when the flag
    was not given. A flag that is given holds at least one integer: an empty list (``--seeds ,``,
    ``--folds ''``) is refused, never read as "all" or as no flag at all."""
    if text is None:
        return None
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise ConfigError(f"{option} expects comma-separated integers such as {example}, got {text!r}")
    return list(dict.fromkeys(values))


def exit_code(main, stopped: str) -> int:
    """``guarded(main)``'s exit code; Ctrl-C prints ``stopped`` and gives 130, not a traceback."""
    try:
        return guarded(main)
    except (Interrupted, KeyboardInterrupt):
        print(stopped, file=sys.stderr)
        return 130


def run(main) -> None:
    """train.py and infer.py: exit with ``main``'s code; an interrupted run resumes."""
    sys.exit(exit_code(main, "stopped; run the same command again to resume"))


def stoppable(main) -> int:
    """The commands that only write results (reports, blends, samples): every file is written whole
    or not at all."""
    return exit_code(main, "stopped (Ctrl-C); the files written so far are whole: run the same command "
                           "again for the rest")


def train_main(argv=None):
    p = parser("Train the folds of an experiment: OOF predictions, CV report (and, when all folds are "
               "done, nothing else to run but infer.py).")
    p.add_argument("--folds", help="comma-separated folds to train, e.g. 0,2: the same as train.folds=[0,2] "
                                   "(default: all)")
    p.add_argument("--force", action="store_true", help="retrain finished folds / overwrite a different experiment")
    p.add_argument("--seeds", help="comma-separated training seeds, e.g. 1,2,3: one experiment each, named "
                                   "<name>_seed<k>, then compared (the seed-to-seed noise, measured)")
    args = p.parse_intermixed_args(argv)
    folds, seeds = parse_ints(args.folds), parse_ints(args.seeds, "--seeds", "1,2,3")
    overrides = args.overrides + ([f"train.folds={folds}"] if folds is not None else [])
    cfg = load_config(args.config, overrides)
    runs = [with_overrides(from_dict(to_dict(cfg)), [f"train.seed={s}", f"name={cfg.name}_seed{s}"])
            for s in seeds] if seeds is not None else [cfg]
    from pipeline.experiment.folder import resumed_config
    given = given_keys(args.config, overrides)
    runs = [resumed_config(r, given) for r in runs]  # an existing experiment's data root, cache, workers...
    check_given(runs[0], given)
    from pipeline.report.cv import compare, report
    from pipeline.train import distributed
    from pipeline.train.process import tune_process
    from pipeline.train.trainer import train
    if len(runs) > 1:
        check_runs(runs, args.force)
    tune_process(runs[0])
    dist = distributed.init()  # torchrun: join its process group
    try:
        oofs = [train(r, force=args.force, dist=dist) for r in runs]
    finally:
        distributed.shutdown(dist)
    for r, oof in zip(runs, oofs):
        if not oof.empty:
            report(r.exp_dir)
    if len(runs) > 1 and all(not oof.empty for oof in oofs):
        compare([r.exp_dir for r in runs], plot=False)


def check_runs(runs: list, force: bool) -> None:
    """``--seeds``: every run's experiment folder (its name, kind and config) and the folder of their
    comparison are checked before the first run trains: a refusal after the others trained is too late."""
    from pipeline.experiment.folder import check_config
    from pipeline.report.cv import comparison_folder
    for r in runs:
        check_config(r, force)
    comparison_folder([r.exp_dir for r in runs])


def infer_main(argv=None):
    p = parser("Predict the test set with every trained fold of an experiment and write submission.csv.")
    p.add_argument("--allow-missing-folds", action="store_true", help="use the folds that exist: the same as "
                   "infer.allow_missing_folds=true")
    args = p.parse_intermixed_args(argv)
    overrides = args.overrides + (["infer.allow_missing_folds=true"] if args.allow_missing_folds else [])
    cfg = load_config(args.config, overrides)
    from pipeline.train.infer import inference_config, predict_submission
    from pipeline.train.process import tune_process
    given = given_keys(args.config, overrides)
    cfg = inference_config(cfg, given)  # the keys not given: as trained
    check_given(cfg, given)
    tune_process(cfg)
    predict_submission(cfg)


def cv_main(argv=None) -> int:
    """``python -m pipeline cv``: the CV report of one experiment, or a comparison of several."""
    from pathlib import Path
    p = argparse.ArgumentParser(
        description="CV report of an experiment's OOF predictions, or a comparison of several experiments "
                    "trained on the same rows and folds.")
    p.add_argument("exp_dirs", nargs="+", metavar="exp_dir", help="experiment folder(s), e.g. oof/sample")
    p.add_argument("--baseline", help="folder name or path of one of the experiments: paired differences to it")
    p.add_argument("--no-plot", action="store_true", help="skip the pictures and report.html (tables only)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap replicates of the patients (default 1000; 0: no intervals)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--out", help="folder for compare.csv, the pictures and report.html "
                                 "(default <parent of the first experiment>/compare/<a>+<b>...)")
    p.add_argument("--by", action="append", default=[], metavar="COL",
                   help="also the AUC per value (or band) of this column of data.csv or the training table; "
                        "repeatable (the config's feature columns, diagnosis, images per patient and fold always)")
    p.add_argument("--top", type=int, default=12, metavar="N",
                   help="report.html's gallery: the N most confident false positives and N false negatives of one "
                        "experiment, or the N images several experiments disagree on most (default 12)")
    p.add_argument("--no-cam", action="store_true", help="no Grad-CAM overlays in the gallery (they load each "
                                                         "fold's best.pt: seconds on the CPU)")
    args = p.parse_args(argv)
    if args.bootstrap < 0 or args.seed < 0:
        p.error("--bootstrap and --seed must be >= 0")
    if args.top < 1:
        p.error("--top must be >= 1")
    # `oof/*` also names the comparisons' default output folder, oof/compare: not an experiment
    outputs = [d for d in args.exp_dirs if Path(d).name == "compare" and not (Path(d) / "oof.csv").exists()]
    exp_dirs = [d for d in args.exp_dirs if d not in outputs] if len(outputs) < len(args.exp_dirs) else args.exp_dirs
    if len(exp_dirs) < len(args.exp_dirs):
        print(f"skipping {', '.join(outputs)}: the output folder of comparisons, not an experiment")
    store = [d for d in exp_dirs if Path(d).name == "mlruns" and (Path(d) / "mlflow.db").is_file()]
    if store and len(store) < len(exp_dirs):  # `oof/*` also names log.tracker=mlflow's default store, oof/mlruns
        exp_dirs = [d for d in exp_dirs if d not in store]
        print(f"skipping {', '.join(store)}: MLflow's store (log.tracker=mlflow), not an experiment")

    def run():
        from functools import partial

        from pipeline.report.cv import compare
        from pipeline.report.mistakes import gallery
        shown = partial(gallery, top=args.top, overlays=None if args.no_cam else cam_overlays)
        compare(exp_dirs, args.baseline, plot=not args.no_plot, n_boot=args.bootstrap, seed=args.seed, out=args.out,
                by=args.by, sections=[shown])
        from pipeline.experiment.tracker import log_report
        from pipeline.report.cv import comparison_folder, experiment_dirs
        log_report(exp_dirs, comparison_folder(experiment_dirs(exp_dirs)[1], args.out) / "report.html")

    return stoppable(run)


def cam_overlays(exp_dir, rows, pixels) -> tuple[dict, str]:
    """The gallery's Grad-CAM overlays (pipeline/train/cam.py), imported when an experiment has some to
    make: the report imports without torch. Without the package grad-cam: one line, and none."""
    try:
        from pipeline.train.cam import overlays
    except ImportError as e:
        print(f"warning: no Grad-CAM overlays: {e} (pip install -r requirements.txt)", file=sys.stderr)
        return {}, f"no Grad-CAM overlays: {e}"
    return overlays(exp_dir, rows, pixels)


def blend_main(argv=None) -> int:
    """``python -m pipeline blend``: blend the OOF predictions and submissions of experiments."""
    from pipeline.report.blend import METHODS, blend
    p = argparse.ArgumentParser(description="Blend the OOF predictions and submissions of experiments.")
    p.add_argument("members", nargs="+", help="experiment folders, e.g. oof/a oof/b")
    p.add_argument("--name", required=True, help="the blend's folder name, e.g. ab_rank")
    p.add_argument("--method", choices=METHODS, default="rank", help="how to combine (default: rank)")
    p.add_argument("--output-dir", help="where the blend folder goes (default: beside the first member)")
    args = p.parse_args(argv)

    def run():
        blend(args.members, args.name, args.method, args.output_dir)

    return stoppable(run)


def sample_main(argv=None) -> int:
    """``python -m pipeline sample DIR``: write the synthetic demo data (not real) into DIR, a new or
    empty folder (generated in DIR.tmp and renamed into place: an interrupted run leaves DIR as it was)."""
    import time
    from pathlib import Path
    p = argparse.ArgumentParser(description="Generate synthetic demo data (not real) into a new or empty folder.")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train-patients", type=int, default=80)
    p.add_argument("--n-test-patients", type=int, default=20)
    p.add_argument("--image-size", type=int, default=128)
    args = p.parse_args(argv)

    def main():
        from pipeline.core import folders
        from pipeline.core.errors import ExperimentError
        from pipeline.data.sample import ensure_sample
        for option, value, least in [("--seed", args.seed, 0), ("--n-train-patients", args.n_train_patients, 1),
                                     ("--n-test-patients", args.n_test_patients, 1), ("--image-size", args.image_size, 16)]:
            if value < least:
                raise ConfigError(f"{option} must be >= {least}, got {value}")
        out = disk.check_name_length(args.out_dir)
        advice = "the sample goes into a new or empty folder"
        if out.exists() and not out.is_dir():
            raise ExperimentError(f"{out}: exists and is not a folder; {advice}")
        if out.is_dir() and any(out.iterdir()):
            held = first_few(folders.listing(out))
            raise ExperimentError(f"{out}: exists and is not empty (it holds {held}); {advice}")
        folders.check_not_inside(out, advice)
        disk.check_writable(out)
        start = time.perf_counter()
        try:
            ensure_sample(out, n_train_patients=args.n_train_patients, n_test_patients=args.n_test_patients,
                          image_size=args.image_size, seed=args.seed)
        except OSError as e:  # the disk filled up: one line (what was written is beside it, <out>.tmp)
            raise disk.storage_error(out, e) or e from None
        print(f"wrote synthetic sample to {out} in {time.perf_counter() - start:.1f} s")

    code = stoppable(main)
    if code:
        sys.exit(code)
    return code
