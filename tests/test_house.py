"""The shape of the package: subpackages in layers whose imports only run downwards (no cycle, no
import into a higher layer, counting every import in a module, entry-point blocks included), the
reporting layer importable without torch, and the tools answering as one command, ``python -m pipeline``."""
from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT, run_cli, run_main

sys.path.insert(0, str(ROOT / "benchmarks"))
import house  # noqa: E402


def test_imports_run_downward_between_the_layers_and_in_no_circle():
    graph, _ = house.package_graph(ROOT)
    assert {house.layer(m) for m in graph} == set(house.LAYERS)
    assert house.upward(graph) == []
    assert house.cycles(graph) == []
    assert not any("cli" in graph[m] for m in graph if m not in ("cli", "__main__"))


def test_one_auc_for_the_whole_pipeline():
    """Validation, OOF, reports and blends score with report/stats.py's auc: sklearn's roc_auc_score is
    imported nowhere else in the package."""
    users = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pipeline").rglob("*.py")
                   if "roc_auc_score" in p.read_text())
    assert users == ["pipeline/report/stats.py"]


def test_house_sees_an_upward_import_and_a_circle():
    """The checks above can fail: an import from the data layer into training is reported, and so is
    a circle; an import only for type checking is neither."""
    modules = {"data.x", "train.y", "core.a", "core.b"}
    tree = ast.parse("from pipeline.train.y import f\nfrom typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    from pipeline.train import y\n")
    graph = {"data.x": house.imports(tree, modules, here="data.x"), "train.y": set(),
             "core.a": {"core.b"}, "core.b": {"core.a"}}
    assert house.upward(graph) == ["data.x -> train.y"]
    assert house.cycles(graph) == [["core.a", "core.b", "core.a"]]
    relative = house.imports(ast.parse("from .b import g\nfrom . import b"), modules, here="core.a")
    assert relative == {"core.b"}


def test_the_reporting_layer_imports_without_torch_or_the_command_line():
    modules = sorted(m for m in house.package_graph(ROOT)[0] if house.layer(m) == "report")
    code = (f"import sys, {', '.join('pipeline.' + m for m in modules)}; "
            f"print(sorted(m for m in sys.modules if m in ('pipeline.cli', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert len(modules) >= 5 and out.strip() == "[]"


def test_python_m_pipeline_names_its_subcommands(tmp_path):
    proc = run_cli("-m", "pipeline", "nothing", cwd=ROOT, check=False)
    assert proc.returncode == 1 and "usage: python -m pipeline {cv,blend,sample}" in proc.stderr
    run_main("-m", "pipeline", "sample", str(tmp_path / "s"), "--n-train-patients", "2", "--n-test-patients", "1",
            "--image-size", "32", cwd=ROOT)
    assert (tmp_path / "s" / "train.csv").is_file()
