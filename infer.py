"""Write <output_dir>/<name>/submission.csv from every trained fold of an experiment.

    python infer.py --config configs/sample.yaml
    python infer.py --config configs/sample.yaml --allow-missing-folds infer.tta=8
    python infer.py name=b0 output_dir=oof     # oof/b0 as trained: every key not given from its config.yaml
"""
from pipeline.cli import infer_main, run

if __name__ == "__main__":
    run(infer_main)
