"""Where and how a model runs: device, mixed precision, memory format, normalisation; the one
forward step shared by training and prediction.

Images travel as uint8 NHWC from the loader; ``to_input`` turns them into normalised float NCHW
on the device, which is channels_last by construction (a permuted NHWC buffer).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import timm
import torch


@dataclass
class Runtime:
    """Where and how tensors run: device, autocast dtype, memory format, normalisation."""
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    mean: torch.Tensor
    std: torch.Tensor
    progress: bool = True  # draw progress bars (rank 0 only, under torchrun)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


BF16_CAPABILITY = (8, 0)  # sm_80 (Ampere) and later compute bfloat16 natively


def autocast_dtype(device_type: str, capability: tuple[int, int] | None, amp: bool,
                   cpu_bf16: bool) -> torch.dtype | None:
    """The autocast dtype, from the device's type and CUDA compute capability (None when unknown or
    not CUDA). On CUDA with ``amp``: bfloat16 from capability 8.0 on, float16 below it or when the
    capability is unknown (the trainer then scales the loss with a GradScaler); None without
    ``amp``. Elsewhere: bfloat16 with ``cpu_bf16``, else None."""
    if device_type != "cuda":
        return torch.bfloat16 if cpu_bf16 else None
    if not amp:
        return None
    return torch.bfloat16 if capability is not None and tuple(capability) >= BF16_CAPABILITY else torch.float16


def make_runtime(model: torch.nn.Module, amp: bool, cpu_bf16: bool, channels_last: bool,
                 device: torch.device | None = None, progress: bool = True) -> Runtime:
    """The runtime of ``model`` on ``device`` (CUDA when there is one, else the CPU); its autocast
    dtype from ``autocast_dtype`` with the device's compute capability."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    amp_dtype = autocast_dtype(device.type, capability, amp, cpu_bf16)
    data_cfg = timm.data.resolve_model_data_config(model.backbone)
    mean = torch.tensor(data_cfg["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(data_cfg["std"], device=device).view(1, 3, 1, 1) * 255
    return Runtime(device, amp_dtype, channels_last, mean, std, progress)


def place(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """The model on the runtime's device, in its memory format."""
    model.to(rt.device)
    return model.to(memory_format=torch.channels_last) if rt.channels_last else model


def to_input(images: torch.Tensor, rt: Runtime) -> torch.Tensor:
    n, h, w, c = images.shape
    x = images.to(rt.device, non_blocking=True).float().contiguous()  # a transposed TTA view is not
    # Normalise in NHWC with mean/std tiled along an image row: broadcasting a (1, 3, 1, 1) over a
    # channels_last tensor runs an inner loop of 3 elements, 10-20x slower on CPU. Same values.
    x.view(n * h, w * c).sub_(rt.mean.view(c).repeat(w)).div_(rt.std.view(c).repeat(w))
    x = x.permute(0, 3, 1, 2)
    return x if rt.channels_last else x.contiguous()


@contextlib.contextmanager
def one_thread(rt: Runtime):
    """Runs the loop's own tensor chores (uint8 -> float, mixup, TTA flips) on one CPU thread. They
    are short and memory-bound; on two threads each op ends in a barrier which, on a CPU shared with
    other processes, often waits for a descheduled thread longer than the work takes
    (benchmarks/README.md). The model itself keeps all threads."""
    threads = torch.get_num_threads()
    if rt.device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def forward(model, x: torch.Tensor, meta: torch.Tensor, rt: Runtime) -> torch.Tensor:
    with rt.autocast():
        return model(x, meta.to(rt.device, non_blocking=True)).float()
