"""Image + tabular binary classification: patient-grouped K-fold training, OOF, submission."""
