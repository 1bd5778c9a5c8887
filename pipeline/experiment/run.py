"""One training command's hold on an experiment folder, as ``train`` goes through it: claim the folds
(their locks), open (check the run against the folder, delete what ``--force`` replaces, record
config, data, features and environment), then as each fold finishes release its lock and assemble
oof.csv.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.core import disk
from pipeline.core.config import Config
from pipeline.core.errors import ExperimentError
from pipeline.core.lock import Lock
from pipeline.experiment.environment import environment, record_environment
from pipeline.experiment.folder import check_config, delete_fold, delete_results, write_record
from pipeline.experiment.oof import collect_oof, write as write_oof
from pipeline.experiment.record import RETRAIN, changed_data_error, data_changes, missing_record, training_record


def fold_lock(exp: Path, fold: int) -> Lock:
    return Lock(exp / f"fold{fold}.lock", f"fold {fold} of {exp}")


def experiment_lock(exp: Path) -> Lock:
    """Held for the short steps that several processes of one experiment share: checking and
    writing its description, assembling oof.csv."""
    return Lock(exp / "experiment.lock", f"{exp}")


def check_run_writable(cfg: Config) -> None:
    """The experiment folder and, when it is still to be made, the fold table can be written: a
    read-only disk is refused before the data is read, not after the image cache is built."""
    from pipeline.data.prepare import fold_table_path
    disk.check_writable(cfg.exp_dir, what=" the experiment", advice="use another output_dir")
    table = fold_table_path(cfg)
    if not table.exists():
        disk.check_writable(table.parent, what=f" the fold table {table.name}",
                               advice="set folds.path to a file in a folder that can be written")


class Run:
    """One training command's hold on an experiment folder: the locks of the folds it trains, the
    topmost folder it created (removed again if it fails before writing anything), and the
    training record it checked the folder against."""

    def __init__(self, cfg: Config, locks: dict, created: Path | None):
        self.cfg, self.exp, self.locks, self.created, self.record = cfg, cfg.exp_dir, locks, created, None

    @classmethod
    def claim(cls, cfg: Config, folds: list[int], force: bool) -> "Run":
        """Before the data is read: the folder is one of ours (or new), and no other process trains
        any of ``folds`` (their locks are taken, all at once or none)."""
        exp = cfg.exp_dir
        check_config(cfg, force)  # read-only: a wrong name or another config fails at once
        check_run_writable(cfg)
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
                write_oof(self.exp / "oof.csv", oof)
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
