"""The data: tables, folds, meta features, the diagnosis, the image cache, augmentation, the dataset,
the synthetic sample, and ``prepare`` (all of it made ready before training)."""
