"""Training and prediction: the loop, the fold loop, checkpoints' life, torchrun, the process, and
the inference stage behind infer.py."""
