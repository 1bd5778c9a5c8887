"""The model: the timm backbone with the meta MLP and heads, mixup and its loss, the runtime
(device, precision, normalisation), checkpoint files and inference backends."""
