"""The experiment folder: what it was trained on, who may write it, what ``--force`` may delete.

``<output_dir>/<name>/`` holds one experiment of this pipeline and nothing else::

    config.yaml      the resolved config (compared on every run)
    data.csv         every training row it was trained on: id, fold, target, group, the feature
                     columns as read, and the content hash of the row's image file
    folds.csv        its fold table (id, fold): ``folds.path=<this file>`` reuses it
    features.json    the fitted meta-feature transform (inference applies exactly this)
    env.json         package versions, device, seed, git commit
    fold<k>/         best.pt, last.pt (while training), log.csv, val_predictions.csv (the fold's
                     predictions of its validation rows, written when the fold is done)
    fold<k>.lock     while a process trains fold k (pipeline/lock.py)
    oof.csv, roc.png, submission.csv

A run on an existing experiment must bring the same config and the same data (compared with
config.yaml, data.csv and features.json); otherwise it is refused before anything is written,
with what changed. The files above are written once, by the first run, and never rewritten.

The folder's life, as ``trainer.train`` goes through it (``Run``): claim the folds (their locks),
open (check the run against the folder, delete what ``--force`` replaces, record config, data,
features and environment), then as each fold finishes release its lock and assemble oof.csv.
"""
from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from . import config as C
from . import folders
from . import oof as oof_table
from .errors import ExperimentError
from .io import write_csv, write_json, write_text
from .lock import Lock
from .record import RETRAIN, changed_data_error, data_changes, missing_record, training_record
from .tables import few

# Keys that change where or how a run is executed, not its results: they may differ on resume.
# Where the data and the fold table lie does not matter either: their content is compared (data.csv).
RUN_ONLY_KEYS = {"name", "output_dir", "train.folds", "train.num_workers", "train.deterministic",
                 "train.compile", "train.compile_mode", "data.root",
                 "data.cache_dir", "data.generate_sample", "folds.path", "features.max_bad_fraction", "infer"}
# Of those, the keys that train.py still uses for what it writes: the views of the OOF predictions.
# Every fold of an experiment is predicted with config.yaml's; infer.py may use others for the submission.
OOF_KEYS = {"infer.tta"}

# Everything this pipeline writes into an experiment folder (besides fold<k>/ folders); --force
# deletes nothing else. Hidden ".<name>.tmp<pid>" files are atomic writes in progress or left by a kill.
OWNED_FILES = re.compile(r"(config\.yaml|env\.json|features\.json|data\.csv|folds\.csv|oof\.csv|roc\.png|"
                         r"submission\.csv|.*\.lock|.*\.lock\.stale\..*|\..*\.tmp\d*)")
OWNED_IN_FOLD = re.compile(r"(best\.pt|last\.pt|last\.prev\.pt|.*\.corrupt|log\.csv|val_predictions\.csv|"
                           r"\..*\.tmp\d*)")


def val_predictions_path(fold_dir: Path) -> Path:
    """Where a finished fold's predictions of its validation rows lie; the experiment's oof.csv is
    assembled from these, and a fold that has one is done."""
    return fold_dir / "val_predictions.csv"


def _result_keys(d: dict, prefix: str = "", run_only: bool = False) -> dict:
    """The keys of a config dict that a training run must keep (all but RUN_ONLY_KEYS, OOF_KEYS included)."""
    out = {}
    for k, v in d.items():
        key = prefix + k
        inside = run_only or key in RUN_ONLY_KEYS
        if isinstance(v, dict) and any(o.startswith(key + ".") for o in OOF_KEYS):
            out.update(_result_keys(v, key + ".", inside))
        elif key in OOF_KEYS or not inside:
            out.update(_result_keys(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def foreign_in_fold(fold_dir: Path) -> list[str]:
    return [q.name for q in sorted(fold_dir.iterdir()) if q.is_dir() or not OWNED_IN_FOLD.fullmatch(q.name)]


def foreign_entries(exp: Path) -> list[str]:
    """What in ``exp`` this pipeline did not write (relative paths)."""
    out = []
    for p in sorted(exp.iterdir()):
        if p.is_dir() and re.fullmatch(r"fold\d+", p.name):
            out += [f"{p.name}/{name}" for name in foreign_in_fold(p)]
        elif p.is_dir() or not OWNED_FILES.fullmatch(p.name):
            out.append(p.name + ("/" if p.is_dir() else ""))
    return out


def saved_config(path: Path) -> C.Config:
    """An experiment's config.yaml (safe_load: a crafted file cannot build Python objects)."""
    try:
        return C.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, ValueError, TypeError, AttributeError, OSError) as e:
        raise ExperimentError(f"{path}: cannot read the saved config ({str(e).splitlines()[0]})") from None


def check_names(cfg: C.Config) -> None:
    """Every folder and file the config names fits the file system (255 bytes a name): a name too long
    is a ConfigError naming the key, not an OSError from the first stat of it."""
    for key, path in [("name", cfg.name), ("output_dir", cfg.output_dir), ("data.root", cfg.data.root),
                      ("data.cache_dir", cfg.data.cache_dir), ("folds.path", cfg.folds.path)]:
        folders.check_names(path, key)


def check_config(cfg: C.Config, force: bool) -> list[str]:
    """Refuse to mix results of a different configuration into an existing experiment folder, or to
    write into a folder that is not an experiment of this pipeline. Returns the result keys that
    differ from the saved config (only with ``force``; [] when none)."""
    exp = cfg.exp_dir
    check_names(cfg)
    folders.check_not_inside(exp, "use another output_dir")
    if exp.exists() and not exp.is_dir():
        raise ExperimentError(f"{exp}: exists and is not a folder; use another name (name=...)")
    other = folders.kind(exp)
    if other not in (None, "experiment"):
        raise ExperimentError(f"{exp}: is {folders.describe(other)}, not an experiment; use another name (name=...) "
                              f"or output_dir")
    saved_path = exp / "config.yaml"
    if not saved_path.is_file():
        foreign = foreign_entries(exp) if exp.is_dir() else []
        if foreign:
            raise ExperimentError(f"{exp}: not an experiment of this pipeline (no config.yaml; it holds "
                                  f"{few(foreign)}); use another name (name=...) or output_dir")
        return []
    try:
        saved = _result_keys(C.to_dict(saved_config(saved_path)))
    except ExperimentError as e:
        if force:
            return ["config.yaml (unreadable)"]
        raise ExperimentError(f"{e}; use a new name (name=...) or --force to start this experiment again") from None
    now = _result_keys(C.to_dict(cfg))
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff and not force:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:4])
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        tta = " (infer.tta is the TTA of its OOF predictions; infer.py may use another)" if "infer.tta" in diff else ""
        raise ExperimentError(f"{saved_path} holds a different experiment ({shown}{more}){tta}; {RETRAIN}")
    return diff


def write_record(exp: Path, cfg: C.Config, record: pd.DataFrame, features: dict) -> None:
    """The experiment's description, each file written once (a run that gets here brings the same
    config and data as the files already there)."""
    own = record[record["fold"] != "-1"]
    for name, write in [("config.yaml", lambda p: write_text(p, C.to_yaml(cfg))),
                        ("data.csv", lambda p: write_csv(p, record)),
                        ("folds.csv", lambda p: write_csv(p, own[[own.columns[0], "fold"]])),
                        ("features.json", lambda p: write_json(p, features))]:
        if not (exp / name).exists():
            write(exp / name)


def delete_results(exp: Path, keep: set[str], why: str) -> None:
    """Delete what this pipeline wrote in ``exp`` except the names in ``keep`` (our own locks),
    saying exactly what goes. Refused when ``exp`` holds anything this pipeline did not write."""
    foreign = foreign_entries(exp)
    if foreign:
        raise ExperimentError(f"--force: {exp} holds files this pipeline did not write ({few(foreign)}); "
                              f"nothing was deleted: move them away or use another name")
    doomed = [p for p in sorted(exp.iterdir()) if p.name not in keep]
    if not doomed:
        return
    print(f"--force: deleting {', '.join(str(p) + ('/' if p.is_dir() else '') for p in doomed)} ({why})",
          file=sys.stderr)
    for p in doomed:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def delete_fold(exp: Path, fold: int) -> None:
    """--force on a fold of the same experiment: its results go, refused when it holds foreign files."""
    d = exp / f"fold{fold}"
    if not d.is_dir():
        return
    foreign = foreign_in_fold(d)
    if foreign:
        raise ExperimentError(f"--force: {d} holds files this pipeline did not write ({few(foreign)}); "
                              f"nothing was deleted: move them away")
    print(f"--force: deleting {d}/ ({', '.join(sorted(q.name for q in d.iterdir()))}) to train fold {fold} again",
          file=sys.stderr)
    shutil.rmtree(d)


def collect_oof(exp: Path, record: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every finished fold's OOF rows (pipeline/oof.py), each id at most once and, when ``record``
    (the experiment's training record) is given, in the fold that its fold table says."""
    paths = [val_predictions_path(d) for d in sorted(exp.glob("fold*")) if d.is_dir()]
    parts = [oof_table.read(p) for p in paths if p.exists()]
    if not parts:
        return pd.DataFrame()
    oof = pd.concat(parts, ignore_index=True)
    ids = oof[oof_table.layout_of(parts[0]).id]
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ExperimentError(f"{exp}: ids predicted by more than one fold: {few(dup.unique())}; its folds were "
                              f"trained on different fold tables: train them again (--force)")
    if record is not None:
        own = record[record["fold"] != "-1"]
        fold_of = dict(zip(own.iloc[:, 0], own["fold"].astype(int)))
        wrong = [i for i, k in zip(ids, oof["fold"]) if fold_of.get(i) != k]
        if wrong:
            raise ExperimentError(f"{exp}: OOF rows outside their fold in folds.csv: {few(wrong)}; train those "
                                  f"folds again (--force --folds ...)")
    return oof


def fold_lock(exp: Path, fold: int) -> Lock:
    return Lock(exp / f"fold{fold}.lock", f"fold {fold} of {exp}")


def experiment_lock(exp: Path) -> Lock:
    """Held for the short steps that several processes of one experiment share: checking and
    writing its description, assembling oof.csv."""
    return Lock(exp / "experiment.lock", f"{exp}")


def _git(*args: str) -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def environment(cfg: C.Config) -> dict:
    """Package versions, device, seed and git commit of this run (env.json)."""
    import albumentations, numpy, sklearn, timm, torch  # noqa: E401 - versions only
    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "albumentations": albumentations.__version__, "pandas": pd.__version__, "numpy": numpy.__version__,
            "scikit-learn": sklearn.__version__, "device": "cuda" if cuda else "cpu",
            "gpu": torch.cuda.get_device_name() if cuda else None, "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(), "seed": cfg.train.seed, "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain"))}


def record_environment(path: Path, env: dict) -> None:
    """Write env.json. A resumed run on another machine, package set or commit keeps the earlier
    environments under 'earlier' (folds trained there may not be bit-identical) and warns."""
    earlier = []
    try:
        old = json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        old = None
    if isinstance(old, dict):
        earlier = old.pop("earlier", [])
        changed = [k for k in env if old.get(k) != env[k]]
        if changed:
            print(f"warning: the environment changed since {path} was written ({', '.join(changed)}); "
                  f"the earlier one is kept in it", file=sys.stderr)
            earlier.append(old)
    write_json(path, {**env, **({"earlier": earlier} if earlier else {})})


def check_writable(cfg: C.Config) -> None:
    """The experiment folder and, when it is still to be made, the fold table can be written: a
    read-only disk is refused before the data is read, not after the image cache is built."""
    from .prepare import fold_table_path
    folders.check_writable(cfg.exp_dir, what=" the experiment", advice="use another output_dir")
    table = fold_table_path(cfg)
    if not table.exists():
        folders.check_writable(table.parent, what=f" the fold table {table.name}",
                               advice="set folds.path to a file in a folder that can be written")


class Run:
    """One training command's hold on an experiment folder: the locks of the folds it trains, the
    topmost folder it created (removed again if it fails before writing anything), and the
    training record it checked the folder against."""

    def __init__(self, cfg: C.Config, locks: dict, created: Path | None):
        self.cfg, self.exp, self.locks, self.created, self.record = cfg, cfg.exp_dir, locks, created, None

    @classmethod
    def claim(cls, cfg: C.Config, folds: list[int], force: bool) -> "Run":
        """Before the data is read: the folder is one of ours (or new), and no other process trains
        any of ``folds`` (their locks are taken, all at once or none)."""
        exp = cfg.exp_dir
        check_config(cfg, force)  # read-only: a wrong name or another config fails at once
        check_writable(cfg)
        created = next((p for p in [*reversed(exp.parents), exp] if not p.exists()), None)
        try:
            exp.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # output_dir is a file, read-only, ...
            raise ExperimentError(f"{exp}: cannot create the experiment folder ({e.strerror})") from None
        run = cls(cfg, {}, created)
        try:
            for k in folds:
                run.locks[k] = fold_lock(exp, k).acquire()
        except BaseException:
            run.release()
            raise
        return run

    def open(self, data, force: bool) -> None:
        """Check this run against the folder (config, data, fold table, fitted features) and write
        its description where it is new; with ``force``, first delete what this run replaces (and
        reassemble oof.csv from what is left). Under the experiment lock: another process may be
        opening the same experiment."""
        cfg, exp = self.cfg, self.exp
        self.record = training_record(data.df, cfg, data.digests)
        features = data.fitted()
        with experiment_lock(exp).acquire_wait():
            changed = check_config(cfg, force)  # again: another process may have started it meanwhile
            missing = missing_record(exp)
            if missing and not force:
                raise ExperimentError(f"{exp}: {missing}, so this run's data cannot be checked against its folds; "
                                      f"{RETRAIN}")
            changes = [f"config: {', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}"] if changed else []
            changes = changes or ([missing] if missing else []) or data_changes(exp, self.record, features)
            if changes and not force:
                raise changed_data_error(exp, changes)
            if changes:
                self._delete_all(f"results of other {'data' if not changed else 'settings'}: {'; '.join(changes)}")
            elif force:
                for k in self.locks:
                    delete_fold(exp, k)
            write_record(exp, cfg, self.record, features)
            record_environment(exp / "env.json", environment(cfg))
        if force:
            self.assemble_oof()

    def _delete_all(self, why: str) -> None:
        """--force on other data or settings: everything goes; nobody may be training any fold then."""
        others = [fold_lock(self.exp, k).acquire() for k in range(self.cfg.folds.n_folds) if k not in self.locks]
        try:
            keep = {lock.path.name for lock in [*self.locks.values(), *others]} | {"experiment.lock"}
            delete_results(self.exp, keep, why)
        finally:
            for o in others:
                o.release()

    def assemble_oof(self) -> pd.DataFrame:
        """<exp>/oof.csv from the finished folds (several processes may finish folds of one experiment)."""
        with experiment_lock(self.exp).acquire_wait():
            oof = collect_oof(self.exp, self.record)
            if oof.empty:
                (self.exp / "oof.csv").unlink(missing_ok=True)
            else:
                oof_table.write(self.exp / "oof.csv", oof)
        return oof

    def fold_done(self, k: int) -> pd.DataFrame:
        """Fold ``k`` is finished (or was already): its lock goes, oof.csv takes its rows."""
        self.locks.pop(k).release()
        return self.assemble_oof()

    def release(self, wrote: bool = False) -> None:
        """Release the fold locks still held; a run that wrote nothing removes the folders it
        created (if empty: another process may have started the experiment meanwhile)."""
        for lock in self.locks.values():
            lock.release()
        self.locks = {}
        if wrote or self.created is None:
            return
        for folder in [self.exp, *self.exp.parents]:
            try:
                folder.rmdir()
            except OSError:
                break
            if folder == self.created:
                break
