"""The loop's CPU memory setting: freed tensors are reused, not page-faulted in again each step;
every TTA view reaches the model normalised."""
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from pipeline.model.runtime import Runtime, to_input
from pipeline.train.loop import tta_views

SCRIPT = """
import resource, torch
from pipeline.train.process import keep_freed_memory

def faults():
    torch.ones(16 << 20)  # 64 MiB, allocated and freed once first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.ones(16 << 20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults()
print(default, keep_freed_memory(), faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_large_tensors_are_reused_without_new_page_faults():
    # A fresh process, as a training run is when runtime.make_runtime applies the setting.
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, check=True)
    default, applied, kept = out.stdout.split()
    assert applied == "True"
    # glibc's default maps each 64 MiB tensor afresh: 10 x 16,384 pages faulted in (163,850 measured);
    # with freed memory kept, the tensors reuse the pages of those before (0 or, when the heap grows
    # once more, 16,384 measured)
    assert int(default) >= 8 * 16384 and int(kept) <= 2 * 16384, out.stdout


@pytest.mark.parametrize("channels_last", [True, False])
def test_all_eight_tta_views_are_distinct_and_normalised(channels_last):
    # infer.tta=5..8 once failed: the transposed view is not contiguous, and the NHWC normalisation
    # views the batch as rows.
    images = torch.randint(0, 256, (2, 6, 6, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor([120.0, 110.0, 100.0]).view(1, 3, 1, 1), torch.tensor([60.0, 55.0, 50.0]).view(1, 3, 1, 1)
    rt = Runtime(torch.device("cpu"), None, channels_last, mean, std, progress=False)
    views = tta_views(images, 8)
    assert len({v.numpy().tobytes() for v in views}) == 8
    for v in views:
        expected = (v.permute(0, 3, 1, 2).float() - mean) / std
        torch.testing.assert_close(to_input(v, rt), expected)
