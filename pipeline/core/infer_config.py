"""The ``infer.*`` keys: test-time views, batch, and what runs the predicting model (``infer.backend``,
``infer.precision``).

Kept beside ``config.py`` (whose ``Config`` holds it as its ``infer`` section and runs ``checks`` with
its own ranges when a config is loaded); the backends themselves are ``pipeline/model/backends.py``
and ``pipeline/model/export.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

BACKENDS = ("torch", "compile", "onnxruntime", "openvino")


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class InferConfig:
    tta: int = _opt(4, "test-time views: 1..8 flips/transposes")
    batch_size: int = _opt(64, "images per inference batch (views come on top)")
    allow_missing_folds: bool = _opt(False, "predict with the folds that exist instead of failing")
    cpu_bf16: bool = _opt(False, "bf16 autocast for the test predictions on CPU (about 2x faster where the CPU has bf16)")
    backend: str = _opt("torch", "what runs the predicting model (OOF and submission): torch (eager), compile "
                                 "(inductor, weights frozen), onnxruntime or openvino (CPU, uint8 images in; exported "
                                 "once into fold<k>/export-<backend>-<precision>.zip); fp32 equal to torch within 1e-4")
    compile_mode: str = _opt("default", "inductor's mode for infer.backend=compile (as train.compile_mode)")
    precision: str = _opt("fp32", "fp32 | int8: int8 (infer.backend=openvino only) quantizes best.pt with NNCF, "
                                  "calibrated on up to 300 of the fold's training images; fp32 where int8 runs slower")

    def checks(self) -> list[tuple[bool, str]]:
        """The ranges of the backend keys, as (holds, message): checked with the rest of the config."""
        return [
            (self.backend in BACKENDS, f"infer.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"),
            (not (self.cpu_bf16 and self.backend in ("onnxruntime", "openvino")),
             f"infer.backend={self.backend} runs fp32: set infer.cpu_bf16=false, or use torch or compile for bf16"),
            (self.precision == "fp32" or (self.precision, self.backend) == ("int8", "openvino"),
             f"infer.precision must be fp32, or int8 with infer.backend=openvino; got {self.precision!r} with "
             f"infer.backend={self.backend}"),
        ]
