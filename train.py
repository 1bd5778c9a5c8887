"""Train all folds of an experiment (default: the bundled synthetic sample).

    python train.py
    python train.py --config configs/sample.yaml --folds 0,2 train.epochs=3 model.backbone=efficientnet_b0
    python train.py --help        # options and every config key with its default
"""
from pipeline.cli import run, train_main

if __name__ == "__main__":
    run(train_main)
