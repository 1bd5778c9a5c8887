"""Image + tabular binary classification: patient-grouped K-fold training, OOF, submission."""
import os

# albumentations asks PyPI for a newer release on import: never reach the network at run time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
