"""Write <output_dir>/<name>/submission.csv from every trained fold of an experiment.

    python infer.py --config configs/sample.yaml
    python infer.py --config configs/sample.yaml --allow-missing-folds infer.tta=8
"""
from pipeline.cli import infer_main, run

if __name__ == "__main__":
    run(infer_main)
