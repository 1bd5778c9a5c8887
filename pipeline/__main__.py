"""The tools around the experiments, as one command with a subcommand each (pipeline/cli.py):

    python -m pipeline cv oof/<name> [oof/<other> ...]      # CV report, or a comparison
    python -m pipeline blend oof/a oof/b --name ab          # a blend of experiments
    python -m pipeline sample input/sample                  # the synthetic demo data
"""
import sys

from pipeline.cli import blend_main, cv_main, sample_main

COMMANDS = {"cv": cv_main, "blend": blend_main, "sample": sample_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m pipeline {{{','.join(COMMANDS)}}} ...  (python -m pipeline cv --help)")
    command = sys.argv.pop(1)
    sys.argv[0] = f"python -m pipeline {command}"
    sys.exit(COMMANDS[command]() or 0)
