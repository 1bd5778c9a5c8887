"""The shape of the code, measured: the subpackages of pipeline/ in their layers, each module's size
and what it imports from the package, imports that run upward between layers, import cycles, and
functions over 60 lines (pipeline/, train.py, infer.py, benchmarks/).

    .venv/bin/python benchmarks/house.py            # this checkout
    .venv/bin/python benchmarks/house.py /tmp/base  # another checkout of the repository
    .venv/bin/python benchmarks/house.py --trace    # also: follow cfg through a tiny train()

Imports are read from the source (``ast``): at module level, inside functions and under
``if __name__ == "__main__"`` alike (a cycle through an entry-point block is a cycle too); imports
only for type checking (``if TYPE_CHECKING:``) are not imports at run time and are left out.

``--trace`` runs ``train`` on a tiny generated sample (1 fold of 2, 1 epoch, 32 px, in a temporary
folder) and records, in call order, every call of a pipeline function that takes the config (a
parameter named ``cfg``). It prints that path, how often it changes file (a reader following the
config jumps there) and how many of its calls are in trainer.py.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMIT = 60
# The layers, lowest first: a module may import from its own layer and the ones before it. "cli" is
# the entry points' module at the top of the package (pipeline/cli.py, pipeline/__main__.py).
LAYERS = ("core", "data", "model", "experiment", "report", "train", "cli")


def module_name(path: Path, package_dir: Path) -> str:
    """'core.config' for pipeline/core/config.py; 'cli' for pipeline/cli.py."""
    parts = path.relative_to(package_dir).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def layer(module: str) -> str:
    """The layer of a module: its subpackage, or 'cli' for the modules at the package's top."""
    first = module.split(".")[0]
    return first if first in LAYERS else "cli"


def type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            out |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return out


def imports(tree: ast.Module, modules: set[str], package: str = "pipeline", here: str = "") -> set[str]:
    """The package modules (of ``modules``) a module imports, anywhere in it. ``here`` is the module's
    own name, for relative imports."""
    found, skip = set(), type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[:-node.level] if "." in here or node.level > 1 else []
                prefix = ".".join(base + ([node.module] if node.module else []))
            elif node.module == package or (node.module or "").startswith(package + "."):
                prefix = node.module[len(package) + 1:]
            else:
                continue
            for a in node.names:
                full = f"{prefix}.{a.name}" if prefix else a.name
                names.append(full if full in modules else prefix)
        elif isinstance(node, ast.Import):
            names = [a.name[len(package) + 1:] for a in node.names if a.name.startswith(package + ".")]
        found.update(n for n in names if n in modules)
    return found


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a module into a layer above its own."""
    return [f"{m} -> {n}" for m in sorted(graph) for n in sorted(graph[m])
            if LAYERS.index(layer(n)) > LAYERS.index(layer(m))]


def package_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, int]]:
    """{module: the package modules it imports} and {module: lines} of ``root``'s pipeline/."""
    package_dir = root / "pipeline"
    paths = {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    graph, lines = {}, {}
    for name, path in paths.items():
        text = path.read_text()
        graph[name] = imports(ast.parse(text), set(paths), here=name) - {name}
        lines[name] = len(text.splitlines())
    return graph, lines


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
        if (root / "pipeline") in file.parents:
            return module_name(file, root / "pipeline")
        frame = frame.f_back
    return None


def follow_cfg(root: Path) -> list[tuple[str | None, str]]:
    """(calling module, module.function) of each call of a pipeline function taking ``cfg``, in
    call order."""
    import tempfile
    sys.path.insert(0, str(root))
    from pipeline.core import config
    from pipeline.data import sample
    from pipeline.train import trainer
    path = []

    def profile(frame, event, arg):
        code = frame.f_code
        if event == "call" and "cfg" in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]:
            file = Path(code.co_filename)
            if (root / "pipeline") in file.parents:
                path.append((caller_module(frame, root), f"{module_name(file, root / 'pipeline')}:{code.co_name}"))

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
    path = [p.split(":") for _, p in trace]
    pairs = list(zip(path, path[1:]))
    switches = sum(a[0] != b[0] for a, b in pairs)
    loop = "train.trainer"
    back = sum(a[0] != loop and b[0] == loop for a, b in pairs)
    up = [f"{caller} > {callee}" for caller, callee in trace if caller and caller in below(graph, callee.split(":")[0])]
    print(f"\nfollowing cfg through train(): {len(path)} calls, {sum(p[0] == loop for p in path)} in "
          f"{loop}, {switches} changes of file, {back} returns into {loop}, {len(up)} calls from a "
          f"module into one above it{': ' + ', '.join(up) if up else ''}")
    print("  " + " > ".join(".".join(p) for p in path))


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--trace"]
    root = Path(args[0] if args else Path(__file__).resolve().parent.parent).resolve()
    graph, lines = package_graph(root)
    print(f"{'layer':<11} {'modules':>7} {'lines':>6}  imports from the layers")
    for name in LAYERS:
        members = [m for m in graph if layer(m) == name]
        used = sorted({layer(n) for m in members for n in graph[m]} - {name}, key=LAYERS.index)
        print(f"{name:<11} {len(members):>7} {sum(lines[m] for m in members):>6}  {', '.join(used)}")
    print(f"\n{'module':<26} {'lines':>5}  imports from pipeline")
    for name in sorted(graph, key=lambda m: (LAYERS.index(layer(m)), m)):
        print(f"{name:<26} {lines[name]:>5}  {', '.join(sorted(graph[name]))}")
    found = cycles(graph)
    print("\nimport cycles: " + ("; ".join(" -> ".join(c) for c in found) if found else "none"))
    up = upward(graph)
    print("imports upward between layers: " + (", ".join(up) if up else "none"))
    over = [f"{m} ({n})" for m, n in lines.items() if n > 400]
    print("modules over 400 lines: " + (", ".join(over) or "none"))
    files = sorted((root / "pipeline").rglob("*.py")) + [root / "train.py", root / "infer.py"] + \
        sorted((root / "benchmarks").glob("*.py"))
    long = long_functions([p for p in files if p.exists()], root)
    print(f"functions over {LIMIT} lines: " + (", ".join(f"{n} ({k})" for n, k in long) or "none"))
    if "--trace" in sys.argv:
        print_trace(root, graph)


if __name__ == "__main__":
    main()
