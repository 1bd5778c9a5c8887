"""An arm against a baseline over several training seeds: each seed's runs paired on the same rows
and folds, the differences averaged, one interval from shared grouped-bootstrap replicates."""
from __future__ import annotations

from types import SimpleNamespace

from pipeline.core.errors import ConfigError
from pipeline.experiment.oof import aligned, read_both_classes
from pipeline.report.cv import experiment_dirs
from pipeline.report.stats import paired_difference, replicates


def over_seeds(base: list, arm: list, n_boot: int = 1000, seed: int = 0) -> SimpleNamespace:
    """An arm against a baseline trained on several seeds (``base[i]`` and ``arm[i]`` share seed i, all
    on the same rows and folds): the mean over the seeds of the per-seed pooled OOF AUCs (``arm``,
    ``base``) and of their differences (``diff``), the 95% interval of that mean difference and its
    share <= 0 from the same grouped-bootstrap replicates of every run. One seed gives the paired
    difference of the comparison table."""
    if len(base) != len(arm) or not base:
        raise ConfigError(f"over seeds: {len(base)} baseline run(s) and {len(arm)} arm run(s); "
                          "give one of each per seed")
    dirs, n = experiment_dirs([*base, *arm])[1], len(base)
    frame = aligned([read_both_classes(d) for d in dirs], dirs)
    pooled, boot = replicates(frame, 2 * n, n_boot, seed)[2:]
    diff, lo, hi, share = paired_difference(boot[:, n:].mean(1), boot[:, :n].mean(1), pooled[n:].mean(),
                                            pooled[:n].mean())
    return SimpleNamespace(seeds=n, arm=float(pooled[n:].mean()), base=float(pooled[:n].mean()), diff=diff,
                           lo=lo, hi=hi, share=share)
