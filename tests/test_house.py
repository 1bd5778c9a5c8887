"""The shape of the package: imports only run downwards (no cycle, counting every import in a
module, entry-point blocks included), and the tools answer as one command, ``python -m pipeline``."""
from __future__ import annotations

import ast
import sys

from conftest import ROOT, run_cli

sys.path.insert(0, str(ROOT / "benchmarks"))
import house  # noqa: E402


def test_no_import_cycle_among_the_pipeline_modules():
    graph = {}
    for path in sorted((ROOT / "pipeline").glob("*.py")):
        graph[path.stem] = house.imports(ast.parse(path.read_text())) - {path.stem}
    assert house.cycles(graph) == []
    assert not any("cli" in graph[m] for m in graph if m not in ("cli", "__main__"))


def test_python_m_pipeline_names_its_subcommands(tmp_path):
    proc = run_cli("-m", "pipeline", "nothing", cwd=ROOT, check=False)
    assert proc.returncode == 1 and "usage: python -m pipeline {cv,blend,sample}" in proc.stderr
    run_cli("-m", "pipeline", "sample", str(tmp_path / "s"), "--n-train-patients", "2", "--n-test-patients", "1",
            "--image-size", "32", cwd=ROOT)
    assert (tmp_path / "s" / "train.csv").is_file()
