"""torchrun support: which process this is, and the few collective steps the trainer needs.

    torchrun --standalone --nproc_per_node=2 train.py ...        # one machine, 2 processes
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 --rdzv_endpoint=host:29500 train.py ...

Without torchrun (no WORLD_SIZE in the environment, or 1) nothing here talks to anything: the
single-process path is the same code with ``world == 1``. NCCL on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes files, prints and draws progress bars."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def average_buffers(self, model: torch.nn.Module) -> None:
        """Batch-norm running statistics averaged over the ranks (each saw its own micro-batches:
        DDP keeps the weights equal, not the buffers), so that every rank validates, and rank 0
        saves, the same model."""
        if self.world == 1:
            return
        for b in model.buffers():
            if b.is_floating_point():
                tdist.all_reduce(b, op=tdist.ReduceOp.SUM)
                b.div_(self.world)
            else:
                tdist.broadcast(b, src=0)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (Ctrl-C reaches the ranks at different steps;
        they must stop at the same one, or the next all-reduce waits forever)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item())

    def vote(self) -> StopVote:
        """A fresh ``StopVote`` over this process group: ``any`` once per step without waiting."""
        return StopVote(self)


class StopVote:
    """``Dist.any`` asked once per step, answered one call late so that the host does not wait for
    it: each call starts an all-reduce (MAX) of its flag without waiting and returns the outcome of
    the call before (False on the first). The ranks make the same calls, so they get the same
    answers: all stop at the same step, the one after the first rank's flag turned true. On CUDA
    the outcome is copied to the host behind the step that asked, and read at the next call, after
    that step's work (the next step's is queued behind it). One process: the flag itself, at once."""

    def __init__(self, dist: Dist):
        self.dist, self.pending = dist, None

    def __call__(self, flag: bool) -> bool:
        if self.dist.world == 1:
            return flag
        before = self.settle()
        t = torch.full((1,), int(flag), device=self.dist.device)  # a fill: no copy from the host
        work = tdist.all_reduce(t, op=tdist.ReduceOp.MAX, async_op=True)
        self.pending = _cuda_outcome(work, t) if t.is_cuda else _host_outcome(work, t)
        return before

    def settle(self) -> bool:
        """The outcome of the vote in flight (False when none), waited for; none is in flight after."""
        pending, self.pending = self.pending, None
        return False if pending is None else pending()


def _host_outcome(work, t: torch.Tensor):
    """The reduce's outcome, read when asked: waits for the reduce then."""
    def outcome() -> bool:
        work.wait()
        return bool(t[0])
    return outcome


def _cuda_outcome(work, t: torch.Tensor):
    """The reduce's outcome, copied to pinned host memory behind the work queued so far; reading it
    waits for that copy only."""
    work.wait()  # the current stream waits for the reduce; the host does not
    host = t.to("cpu", non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()

    def outcome() -> bool:
        copied.synchronize()
        return bool(host[0])
    return outcome


SINGLE = Dist()


def init() -> Dist:
    """Join the process group that torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK in the
    environment); SINGLE without it. Ranks other than 0 print nothing on stdout."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(d.local_rank)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if not d.main:
        sys.stdout = open(os.devnull, "w")
    return d


def shutdown(d: Dist) -> None:
    if d.world > 1 and tdist.is_initialized():
        tdist.destroy_process_group()
