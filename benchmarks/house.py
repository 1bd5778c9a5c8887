"""The shape of the code, measured: each pipeline module's size and what it imports from the package,
import cycles, and functions over 60 lines (pipeline/, train.py, infer.py, benchmarks/).

    .venv/bin/python benchmarks/house.py            # this checkout
    .venv/bin/python benchmarks/house.py /tmp/base  # another checkout of the repository
    .venv/bin/python benchmarks/house.py --trace    # also: follow cfg through a tiny train()

Imports are read from the source (``ast``): at module level, inside functions and under
``if __name__ == "__main__"`` alike (a cycle through an entry-point block is a cycle too).

``--trace`` runs ``trainer.train`` on a tiny generated sample (1 fold of 2, 1 epoch, 32 px, in a
temporary folder) and records, in call order, every call of a pipeline function that takes the
config (a parameter named ``cfg``). It prints that path, how often it changes file (a reader
following the config jumps there) and how many of its calls are in trainer.py.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMIT = 60


def imports(tree: ast.Module, package: str = "pipeline") -> set[str]:
    """The package modules a module imports, anywhere in it."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                names = [node.module.split(".")[0]]
            elif node.level == 1:
                names = [a.name for a in node.names]
            elif node.module and node.module.startswith(package + "."):
                names = [node.module.split(".")[1]]
            elif node.module == package:
                names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith(package + ".")]
        found.update(names)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    out, seen = [], set()

    def walk(node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cyc = path[path.index(nxt):]
                key = frozenset(cyc)
                if key not in seen:
                    seen.add(key)
                    out.append(cyc + [nxt])
            elif nxt in graph:
                walk(nxt, path + [nxt])
    for start in sorted(graph):
        walk(start, [start])
    return out


def long_functions(paths: list[Path], root: Path) -> list[tuple[str, int]]:
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > LIMIT:
                    out.append((f"{path.relative_to(root)}:{node.name}", n))
    return sorted(out, key=lambda x: -x[1])


def caller_module(frame, root: Path) -> str | None:
    """The pipeline module of the nearest calling frame that is in pipeline/."""
    frame = frame.f_back
    while frame is not None:
        file = Path(frame.f_code.co_filename)
        if file.parent == root / "pipeline":
            return file.stem
        frame = frame.f_back
    return None


def follow_cfg(root: Path) -> list[tuple[str | None, str]]:
    """(calling module, module.function) of each call of a pipeline function taking ``cfg``, in
    call order."""
    import tempfile
    sys.path.insert(0, str(root))
    from pipeline import config, sample, trainer
    path = []

    def profile(frame, event, arg):
        code = frame.f_code
        if event == "call" and "cfg" in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]:
            file = Path(code.co_filename)
            if file.parent == root / "pipeline":
                path.append((caller_module(frame, root), f"{file.stem}.{code.co_name}"))

    with tempfile.TemporaryDirectory() as tmp:
        sample.generate_sample(Path(tmp) / "data", n_train_patients=12, n_test_patients=2, image_size=32, seed=0)
        cfg = config.load_config(None, [f"data.root={tmp}/data", f"data.cache_dir={tmp}/cache",
                                        f"output_dir={tmp}/oof", "model.image_size=32", "folds.n_folds=2",
                                        "train.epochs=1", "train.batch_size=8", "train.folds=[0]",
                                        "data.generate_sample=false"])
        sys.setprofile(profile)
        try:
            trainer.train(cfg)
        finally:
            sys.setprofile(None)
    return path


def below(graph: dict[str, set[str]], module: str) -> set[str]:
    """Every module ``module`` imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def print_trace(root: Path, graph: dict[str, set[str]]) -> None:
    trace = follow_cfg(root)
    path = [p.split(".") for _, p in trace]
    pairs = list(zip(path, path[1:]))
    switches = sum(a[0] != b[0] for a, b in pairs)
    back = sum(a[0] != "trainer" and b[0] == "trainer" for a, b in pairs)
    upward = [f"{caller} > {callee}" for caller, callee in trace
              if caller and caller in below(graph, callee.split(".")[0])]
    print(f"\nfollowing cfg through train(): {len(path)} calls, {sum(p[0] == 'trainer' for p in path)} in "
          f"trainer.py, {switches} changes of file, {back} returns into trainer.py, {len(upward)} calls from a "
          f"module into one above it{': ' + ', '.join(upward) if upward else ''}")
    print("  " + " > ".join(".".join(p) for p in path))


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--trace"]
    root = Path(args[0] if args else Path(__file__).resolve().parent.parent).resolve()
    modules = sorted((root / "pipeline").glob("*.py"))
    graph = {}
    print(f"{'module':<14} {'lines':>5}  imports from pipeline")
    for path in modules:
        name = path.stem
        graph[name] = imports(ast.parse(path.read_text())) - {name}
        print(f"{name:<14} {len(path.read_text().splitlines()):>5}  {', '.join(sorted(graph[name]))}")
    found = cycles(graph)
    print("\nimport cycles: " + ("; ".join(" -> ".join(c) for c in found) if found else "none"))
    over = [p for p in modules if len(p.read_text().splitlines()) > 400]
    print("modules over 400 lines: " + (", ".join(f"{p.stem} ({len(p.read_text().splitlines())})" for p in over)
                                        or "none"))
    files = modules + [root / "train.py", root / "infer.py"] + sorted((root / "benchmarks").glob("*.py"))
    long = long_functions([p for p in files if p.exists()], root)
    print(f"functions over {LIMIT} lines: " + (", ".join(f"{n} ({k})" for n, k in long) or "none"))
    if "--trace" in sys.argv:
        print_trace(root, graph)


if __name__ == "__main__":
    main()
