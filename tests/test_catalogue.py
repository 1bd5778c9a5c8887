"""docs/bad-input.md cites, for each row, the tests that hold it; this module keeps the citations true.

Pure parsing (``ast`` over tests/*.py): no test module is imported, no test is run. The rule, for every
row of a table whose last column is headed "Test":

1. The Test cell holds backticked references, or says ``none (tried by hand)`` (UNTESTED) and nothing
   else; text outside backticks is a comment. A reference is ``test_name``, ``test_name[id|id]``,
   ``tests/test_x.py::test_name[id]``, ``...[id|id]`` (the first test cited by the row above, with
   these ids) or ``tests/test_x.py`` (a whole file). ``[...]`` cites every id of a parametrized test,
   and an id may end in ``*`` (every id that starts so).
2. Every reference resolves: a bare name is a ``def test_...`` in exactly one of tests/*.py, a
   qualified one is in the file it names, a cited file exists.
3. Every cited id exists: the ids are worked out from the ``@pytest.mark.parametrize`` decorators as
   pytest makes them (``ids=``, ``pytest.param(id=)``, a dict's keys, the values themselves). Where
   the values are not literals, each ``-``-separated part of the id must appear in the test's file.
4. The row is exercised by each test it cites: some *quote* of the row's message is in a string
   literal of that test. The message is the backticked text of the middle column (of the first column where
   the middle one has none), cut into pieces at placeholders (``<...>``, ``...``) and into clauses at
   ``: `` and ``; ``. Words are compared without case and without the punctuation at their edges. A
   quote is a run of at least QUOTE_WORDS words of a piece, two of them not stop words or numbers, or
   a whole clause of two words or more with one such word (``no rows``), and it must be distinctive:
   in the messages of at most MAX_SHARED rows of the table.
   A cited test's string literals are those of its function and decorators, and, followed by name,
   of the fixtures it takes and of the helpers, constants and parametrize tables it uses in tests/
   (conftest.py included); docstrings do not count. Where the row cites some ids of a parametrized
   test, the parametrize entries of the other ids do not count (a row citing the wrong case fails),
   and an f-string of the test over its parametrize arguments is also read with the cited values
   filled in. A cited whole file offers every string literal in it.
5. At most MAX_UNTESTED rows say UNTESTED, so that a new row without a test is seen.
"""
from __future__ import annotations

import ast
import fnmatch
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "bad-input.md"
TESTS = ROOT / "tests"
UNTESTED = "none (tried by hand)"
MAX_UNTESTED = 3
QUOTE_WORDS = 3
MAX_SHARED = 3
NAME_WORDS = 2
NAME_STEM = 5
NAME_RARE = 10
STOP = set("a an the of in on at to is are was be and or not no it its by with for as all s es from than this "
           "that one any each".split())


# --- the document ----------------------------------------------------------------------------------

@dataclass
class Row:
    line: int
    cells: list[str]

    @property
    def case(self) -> str:
        return self.cells[0]

    @property
    def message(self) -> str:
        return self.cells[-2]

    @property
    def tests(self) -> str:
        return self.cells[-1]


def split_cells(line: str) -> list[str]:
    """The cells of a markdown table row; ``\\|`` is a ``|`` inside a cell."""
    return [p.replace("\\|", "|").strip() for p in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def table_rows(text: str) -> list[Row]:
    """The rows of every table whose last column is headed "Test"."""
    rows, header = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith("|"):
            header = None
        elif header is None:
            header = split_cells(line)
        elif not set(line) <= set("|-: ") and header[-1].startswith("Test"):
            rows.append(Row(number, split_cells(line)))
    return rows


@dataclass
class Ref:
    text: str
    name: str | None               # None: a whole file
    file: str | None               # tests/test_x.py, where the reference names it
    ids: list[str] | None = None   # None: none cited; ["..."]: every id


REF = re.compile(r"(?:(?P<file>tests/\w+\.py)(?:::(?P<name>test_\w+))?|(?P<bare>test_\w+)|(?P<prev>\.\.\.))"
                 r"(?:\[(?P<ids>[^\]]*)\])?")


def parse_refs(cell: str, previous: Ref | None) -> list[Ref]:
    """The references of a Test cell; ``previous``: the first test cited by the row above."""
    refs = []
    for text in re.findall(r"`([^`]*)`", cell):
        m = REF.fullmatch(text.strip())
        if not m:
            raise ValueError(f"`{text}` is not a test reference")
        ids = None if m["ids"] is None else [i.strip() for i in m["ids"].split("|")]
        if m["prev"]:
            if previous is None or ids is None:
                raise ValueError(f"`{text}`: '...[ids]' needs ids and a test cited first by the row above")
            refs.append(Ref(text, previous.name, previous.file, ids))
        elif m["bare"]:
            refs.append(Ref(text, m["bare"], None, ids))
        elif m["name"] is None and ids is not None:
            raise ValueError(f"`{text}`: ids need a test name")
        else:
            refs.append(Ref(text, m["name"], m["file"], ids))
    return refs


STRIP = "'\"`()[]{}<>,;:.!?-=/"


def words(text: str) -> list[str]:
    """The words of ``text``: split at white space, without case, the backslashes of a regex and the
    quotes, brackets and other punctuation at their edges (``'image_name',`` is ``image_name``); a path
    is its last part (``oof/<name>/fold1/plot.png`` and ``/tmp/x/fold1/plot.png`` are ``plot.png``)."""
    out = []
    for w in text.replace("\\", "").lower().split():
        w = w.strip(STRIP)
        if "/" in w:
            w = w.rsplit("/", 1)[-1].strip(STRIP)
        if w:
            out.append(w)
    return out


def content(ws: list[str]) -> int:
    """How many of ``ws`` say something: not a stop word, not a number."""
    return sum(1 for w in ws if w not in STOP and not re.fullmatch(r"[\d.,/x%+-]+", w))


PLACEHOLDER = re.compile(r"<[^<>]*>|\.\.\.|…")


def message_pieces(row: Row) -> list[list[list[str]]]:
    """The row's message: pieces (cut at placeholders) of clauses (cut at ': ' and '; ') of words."""
    spans = re.findall(r"`([^`]*)`", row.message)
    pieces = []
    for span in spans:
        for piece in PLACEHOLDER.split(re.sub(r"^(error|warning): ", "", span)):
            clauses = [words(c) for c in re.split(r": |; ", piece)]
            if any(clauses):
                pieces.append(clauses)
    return pieces


def message_text(row: Row) -> str:
    """The row's words, piece by piece and clause by clause, space-padded for a word-wise ``in``."""
    return "\n".join(f" {' '.join(w for c in piece for w in c)} \n {' | '.join(' '.join(c) for c in piece)} "
                     for piece in message_pieces(row))


def quotes(row: Row, table: list[Row]) -> set[str]:
    """Every distinctive quote of the row's message (rule 4)."""
    out = set()
    for piece in message_pieces(row):
        flat = [w for clause in piece for w in clause]
        for n in range(QUOTE_WORDS, len(flat) + 1):
            out.update(" ".join(run) for run in (flat[i:i + n] for i in range(len(flat) - n + 1))
                       if content(run) >= 2)
        out.update(" ".join(clause) for clause in piece if len(clause) >= 2 and content(clause) >= 1)
    texts = [message_text(r) for r in table]
    return {q for q in out if sum(f" {q} " in t for t in texts) <= MAX_SHARED}


# --- the tests ---------------------------------------------------------------------------------------

@dataclass
class Module:
    path: Path
    source: str
    tree: ast.Module
    defs: dict = field(default_factory=dict)        # top-level name -> node
    imports: dict = field(default_factory=dict)     # name -> (stem of a tests/ module, name there)
    docstrings: set = field(default_factory=set)    # id() of each docstring's node
    fixtures: set = field(default_factory=set)      # names of the functions that are pytest fixtures


def load_module(path: Path) -> Module:
    source = path.read_text()
    mod = Module(path, source, ast.parse(source))
    for node in ast.walk(mod.tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                mod.docstrings.add(id(first.value))
    for node in mod.tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            mod.defs[node.name] = node
            if any("fixture" in ast.unparse(d) for d in getattr(node, "decorator_list", [])):
                mod.fixtures.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        mod.defs[name.id] = node
        elif isinstance(node, ast.ImportFrom) and node.module:
            stem = node.module.split(".")[-1]
            if (path.parent / f"{stem}.py").is_file():
                for alias in node.names:
                    mod.imports[alias.asname or alias.name] = (stem, alias.name)
    return mod


@lru_cache(maxsize=None)
def parsed_tests() -> dict[str, Module]:
    return {p.stem: load_module(p) for p in sorted(TESTS.glob("*.py"))}


def find_test(name: str, file: str | None, mods: dict[str, Module]) -> tuple[Module, ast.FunctionDef]:
    where = [m for m in mods.values() if isinstance(m.defs.get(name), (ast.FunctionDef, ast.AsyncFunctionDef))]
    if file is not None:
        where = [m for m in where if m.path.name == Path(file).name]
    if not where:
        raise LookupError(f"no test {name}" + (f" in {file}" if file else " in tests/"))
    if len(where) > 1:
        raise LookupError(f"{name} is in {', '.join(m.path.name for m in where)}: write tests/x.py::{name}")
    return where[0], where[0].defs[name]


@dataclass
class Entry:
    id: str
    node: ast.AST
    values: dict        # argname -> its value's ast node


def literal(node: ast.AST, mod: Module) -> ast.AST:
    """A module-level constant named in a decorator, as the literal it is."""
    if isinstance(node, ast.Name) and isinstance(mod.defs.get(node.id), ast.Assign):
        return mod.defs[node.id].value
    return node


def id_of(node: ast.AST, argname: str, index: int, mod: Module) -> str:
    """The id pytest gives one value."""
    if isinstance(node, ast.Name) and isinstance(mod.defs.get(node.id), (ast.FunctionDef, ast.ClassDef)):
        return node.id  # functions and classes by their __name__
    if isinstance(node, ast.Attribute) and ast.unparse(node) in ("np.nan", "numpy.nan", "math.nan"):
        return "nan"
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return f"{argname}{index}"
    return str(value) if isinstance(value, (str, int, float, bool, complex, type(None))) else f"{argname}{index}"


def parametrize_tables(func: ast.FunctionDef, mod: Module) -> list[list[Entry] | None]:
    """Per parametrize decorator, the nearest first: its entries, or None where they are not literals."""
    tables = []
    for dec in reversed(func.decorator_list):
        if not (isinstance(dec, ast.Call) and ast.unparse(dec.func).endswith("parametrize") and len(dec.args) > 1):
            continue
        try:
            argnames = ast.literal_eval(dec.args[0])
            argnames = [a.strip() for a in argnames.split(",")] if isinstance(argnames, str) else list(argnames)
            values = literal(dec.args[1], mod)
            entries = []
            if isinstance(values, ast.Dict):
                for i, (k, v) in enumerate(zip(values.keys, values.values)):
                    entries.append(Entry(id_of(k, argnames[0], i, mod), ast.Tuple([k, v]), {argnames[0]: k}))
            elif isinstance(values, (ast.List, ast.Tuple)):
                for i, elt in enumerate(values.elts):
                    given, parts = None, [elt]
                    if isinstance(elt, ast.Call) and ast.unparse(elt.func).endswith("param"):
                        parts = elt.args
                        given = next((ast.literal_eval(k.value) for k in elt.keywords if k.arg == "id"), None)
                    elif len(argnames) > 1:
                        parts = elt.elts
                    made = "-".join(id_of(p, a, i, mod) for p, a in zip(parts, argnames))
                    entries.append(Entry(given or made, elt, dict(zip(argnames, parts))))
            else:
                raise ValueError("not a literal")
            ids = next((k.value for k in dec.keywords if k.arg == "ids"), None)
            if ids is not None:
                for entry, given in zip(entries, ast.literal_eval(literal(ids, mod))):
                    entry.id = str(given)
        except (ValueError, SyntaxError, TypeError, AttributeError):
            entries = None
        tables.append(entries)
    return tables


def cited_entries(ref: Ref, func: ast.FunctionDef, mod: Module) -> tuple[list[Entry], list[Entry]]:
    """Check the ids ``ref`` cites (rule 3); return the parametrize entries cited and those not."""
    tables = parametrize_tables(func, mod)
    if ref.ids is None or ref.ids == ["..."]:
        if ref.ids and not tables:
            raise LookupError(f"{ref.name} is not parametrized, but `{ref.text}` cites its ids")
        return [], []
    if not tables:
        raise LookupError(f"{ref.name} is not parametrized, but `{ref.text}` cites its ids")
    if any(t is None for t in tables):  # not literals: the id's parts must be in the file
        for cited in ref.ids:
            missing = [p for p in cited.rstrip("*").split("-") if p and p not in mod.source]
            if missing:
                raise LookupError(f"{ref.name}[{cited}]: {', '.join(missing)} nowhere in {mod.path.name}")
        return [], []
    known = [""]
    for table in tables:
        known = [f"{a}-{e.id}" if a else e.id for a in known for e in table]
    for cited in ref.ids:
        if not fnmatch.filter(known, cited):
            raise LookupError(f"{ref.name} has no id {cited!r} (it has {', '.join(known)})")
    if len(tables) > 1:
        return [], []
    hit = [e for e in tables[0] if any(fnmatch.fnmatch(e.id, c) for c in ref.ids)]
    return hit, [e for e in tables[0] if e not in hit]


def filled_in(node: ast.JoinedStr, entry: Entry) -> str | None:
    """An f-string over parametrize arguments, with the values of ``entry``; None where it is not one."""
    out = []
    for part in node.values:
        if isinstance(part, ast.Constant):
            out.append(str(part.value))
        elif isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name) \
                and isinstance(entry.values.get(part.value.id), ast.Constant):
            out.append(str(entry.values[part.value.id].value))
        else:
            return None
    return "".join(out)


def strings_of(func: ast.AST, mod: Module, mods: dict[str, Module], cited: list[Entry] = (),
               not_cited: list[Entry] = ()) -> list[str]:
    """The string literals of ``func`` and of what it uses in tests/, followed by name (rule 4): the
    fixtures its arguments name, and the module-level functions, classes and constants (of its own
    module, or imported from another one in tests/) that its code names and does not assign itself."""
    out, done, todo = [], set(), [(func, mod)]
    skip = {id(e.node) for e in not_cited}
    conftest = mods.get("conftest")
    while todo:
        top, mod = todo.pop()
        if id(top) in done:
            continue
        done.add(id(top))
        own = {n.id for n in ast.walk(top) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)} | \
              {n.arg for n in ast.walk(top) if isinstance(n, ast.arg)}
        stack = [top]
        while stack:
            node = stack.pop()
            if id(node) in skip or id(node) in mod.docstrings:
                continue
            stack.extend(ast.iter_child_nodes(node))
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.append(node.value)
            elif isinstance(node, ast.JoinedStr) and top is func:
                out.extend(s for s in (filled_in(node, e) for e in cited) if s is not None)
            if isinstance(node, ast.arg):  # a fixture, of this module or of conftest.py
                found = [(m, m.defs[node.arg]) for m in (mod, conftest) if m and node.arg in m.fixtures]
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in own:
                found = [(mod, mod.defs.get(node.id))]
                if node.id in mod.imports and mod.imports[node.id][0] in mods:
                    there = mods[mod.imports[node.id][0]]
                    found.append((there, there.defs.get(mod.imports[node.id][1])))
            else:
                continue
            todo.extend((d, m) for m, d in found if d is not None and d is not top)
    return out


def file_strings(mod: Module) -> list[str]:
    return [n.value for n in ast.walk(mod.tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in mod.docstrings]


# --- the check ---------------------------------------------------------------------------------------

def stems(text: str) -> set[str]:
    """The words of ``text`` that say something, by their first NAME_STEM letters (``cells`` and ``cell``
    are ``cell``, ``categories`` and ``category`` ``categ``)."""
    ws = [w[:-1] if w.endswith("s") and len(w) > 3 else w for w in words(re.sub(r"[_`/-]", " ", text))]
    return {w[:NAME_STEM] for w in ws if w not in STOP | {"test"} and not re.fullmatch(r"[\d.,/x%+-]+", w)}


def common_stems(mods: dict[str, Module]) -> set[str]:
    """The stems in the names of more than NAME_RARE tests (``refused``, ``experiment``, ...): they tell no
    test from another."""
    counts = {}
    for mod in mods.values():
        for name, node in mod.defs.items():
            if name.startswith("test_") and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for stem in stems(name):
                    counts[stem] = counts.get(stem, 0) + 1
    return {stem for stem, n in counts.items() if n > NAME_RARE}


def check_row(row: Row, refs: list[Ref], table: list[Row], mods: dict[str, Module]) -> None:
    """Check one row by the rule above; raise AssertionError saying what is wrong."""
    if not refs:
        raise AssertionError(f"no test cited; cite one or write `{UNTESTED}`")
    wanted = quotes(row, table)
    about = stems(f"{row.case} {row.message}") - common_stems(mods)
    quoted = []
    for ref in refs:
        try:
            if ref.name is None:
                if not (ROOT / ref.file).is_file():
                    raise LookupError(f"no file {ref.file}")
                haystack = file_strings(mods[Path(ref.file).stem])
            else:
                mod, func = find_test(ref.name, ref.file, mods)
                haystack = strings_of(func, mod, mods, *cited_entries(ref, func, mod))
        except LookupError as e:
            raise AssertionError(f"`{ref.text}`: {e}") from None
        hay = "\n".join(f" {' '.join(words(h))} " for h in haystack)
        if any(f" {q} " in hay for q in wanted):
            quoted.append(ref)
        elif len(stems(ref.name or ref.file) & about) < NAME_WORDS:
            why = "no quote of the row's message in its strings" if wanted else "the row quotes no message"
            raise AssertionError(f"`{ref.text}`: {why}, and its name has fewer than {NAME_WORDS} words of the "
                                 f"row's case")
    if wanted and not quoted:
        raise AssertionError(f"no quote of the row's message in {', '.join(r.text for r in refs)}")


def check_document(text: str, mods: dict[str, Module]) -> tuple[list[str], int, int]:
    """(what is wrong, rows, rows without a test) of a catalogue's text."""
    problems, untested, previous = [], 0, None
    table = table_rows(text)
    for row in table:
        where = f"docs/bad-input.md:{row.line}: {row.case[:60]}"
        if row.tests == UNTESTED:
            untested, previous = untested + 1, None
            continue
        try:
            refs = parse_refs(row.tests, previous)
        except ValueError as e:
            problems.append(f"{where}: {e}")
            previous = None
            continue
        previous = next((r for r in refs if r.name), None)
        try:
            check_row(row, refs, table, mods)
        except AssertionError as e:
            problems.append(f"{where}: {e}")
    return problems, len(table), untested


# --- the tests of the catalogue -------------------------------------------------------------------

def test_every_row_cites_tests_that_exist_and_exercise_it():
    problems, n_rows, _ = check_document(DOC.read_text(), parsed_tests())
    assert n_rows > 50, f"only {n_rows} rows read from {DOC}: has the table format changed?"
    assert not problems, "\n".join(problems)


def test_few_rows_are_without_a_test():
    _, _, untested = check_document(DOC.read_text(), parsed_tests())
    assert untested <= MAX_UNTESTED, (f"{untested} rows of {DOC.name} say {UNTESTED!r}, at most {MAX_UNTESTED} "
                                      "may: write a test for the new one")


def test_the_intro_says_that_this_module_checks_the_citations():
    assert "tests/test_catalogue.py" in DOC.read_text().split("\n|", 1)[0]


SYNTHETIC = """
| Case | What the user sees | Test |
|---|---|---|
| Training table missing | `error: <root>/train.csv: file not found` | `test_missing_train_csv` |
| A case | {says} | {test} |
"""


def synthetic(says: str, test: str) -> tuple[list[str], int]:
    problems, rows, untested = check_document(SYNTHETIC.format(says=says, test=test), parsed_tests())
    assert rows == 2
    return problems, untested


@pytest.mark.parametrize("says, test", [
    ("`error: <root>/train.csv: the file is empty`", "`test_empty_csv[zero_bytes]`"),
    ("`error: <root>/train.csv: no rows`", "`tests/test_data_errors.py::test_empty_csv[header_only]`"),
    ("`error: <root>/train.csv: missing column(s) sex (has: ...)`", "`test_missing_column[sex]`"),  # an f-string
    ("`error: <root>/train.csv: column 'target' must be 0/1`", "`test_non_binary_target[...]` (a comment)"),
    ("`error: <root>/train.csv: file not found`", "`tests/test_data_errors.py`"),
    ("anything", UNTESTED),
])
def test_the_checker_passes_a_true_row(says, test):
    assert synthetic(says, test) == ([], test == UNTESTED)


@pytest.mark.parametrize("test, says", [
    ("`test_that_does_not_exist`", "no test test_that_does_not_exist in tests/"),
    ("`tests/test_folds.py::test_missing_train_csv`", "no test test_missing_train_csv in tests/test_folds.py"),
    ("`tests/test_nothere.py`", "no file tests/test_nothere.py"),
    ("`test_empty_csv[one_byte]`", "has no id 'one_byte'"),
    ("`test_missing_train_csv[x]`", "is not parametrized"),
    ("`test_duplicate_ids_listed_with_their_count`", "no quote of the row's message"),  # another test
    ("`test_empty_csv[header_only]`", "no quote of the row's message"),  # the other case of the right test
    ("`test_empty_csv[zero_bytes]`, `test_missing_train_csv`", "`test_missing_train_csv`: no quote"),  # each one
    ("`...[header_only]`", "test_missing_train_csv is not parametrized"),  # the row above's test
    ("tried by hand", "no test cited"),
    ("`pytest -k empty`", "is not a test reference"),
])
def test_the_checker_fails_a_wrong_row(test, says):
    problems, _ = synthetic("`error: <root>/train.csv: the file is empty`", test)
    assert len(problems) == 1 and says in problems[0], problems
