"""The experiment folder: its rules, its record (what it was trained on), its environment, the OOF
table and a training command's hold on it. Importing ``experiment.oof`` needs no torch."""
