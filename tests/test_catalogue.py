"""docs/bad-input.md cites, for each row, the tests that hold it; this module keeps the citations true.

Pure parsing (``ast`` over tests/*.py): no test is imported or run. For every row of a table whose last
column is headed "Test" (every table of the document has one, the "Further misuse" one included):

1. References. The Test cell is exactly ``none (tried by hand)`` (UNTESTED), or holds backticked
   references, each one of ``test_name``, ``test_name[id|id]``, ``tests/test_x.py::test_name[id]``,
   ``tests/test_x.py`` (a whole file) and ``...[id|id]`` (the first test cited by the row above, with
   these ids); ``[...]`` cites every id, ``id*`` every id that starts so. Text outside backticks is a
   comment; every backticked span must be a reference.
2. Existence. A bare name is a ``def test_...`` in exactly one of tests/*.py (else qualify it), a
   qualified name is in the file it names, a cited file exists.
3. Ids. Each cited id is one that pytest makes from the ``@pytest.mark.parametrize`` decorators
   (``ids=``, ``pytest.param(id=...)``, a dict's keys, the values, a function by its name). Where the
   values are not literals (a comprehension), each ``-``-separated part of the id must be in the file.
4. Exercised. The row's message is the backticked text of its middle column. A *quote* of it is, in
   a piece between placeholders (``<...>``, ``...``), a run of at least QUOTE_WORDS words of which two
   are not stop words or numbers, or a whole clause (cut at ``: `` and ``; `` too) of two words or
   more, one of them not (``no rows``); it must be distinctive: in the messages of at most MAX_SHARED
   rows. Words are compared lower-cased, without the punctuation at their edges, a path by its last
   part (``oof/<name>/fold1/plot.png`` and ``/tmp/x/fold1/plot.png`` are ``plot.png``).
   A test's strings are the string literals (not docstrings) of its function and decorators and,
   followed by name, of the fixtures it takes and the module-level helpers, constants and parametrize
   tables in tests/ that its code uses. Cited with some ids, only those ids' parametrize entries count,
   and its f-strings over its arguments are read with those entries filled in too. A cited whole file
   offers every string literal in it.
   - A row with a message passes when a cited test quotes it, and every other cited test quotes it
     too or has a name close to the row.
   - A row without a message (a behaviour: "nothing: ...", "training runs") passes when the name of
     each cited test is close to the row.
   A name is close to a row when it shares NAME_WORDS telling words with the row's case and outcome:
   words compared by their first NAME_STEM letters (without a plural's ``s``), leaving out stop words
   and the words in the names of more than NAME_RARE tests (``refused``, ``experiment``, ...).
5. Untested. At most MAX_UNTESTED rows say UNTESTED, so that a new row without a test is seen.
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
MAX_SHARED = 4
NAME_WORDS = 2
NAME_STEM = 5
NAME_RARE = 10
STOP = set("a an the of in on at to is are was be and or not no it its by with for as all s es from than this "
           "that one any each use another".split())


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


def quotes(row: Row, texts: list[str]) -> set[str]:
    """Every distinctive quote of the row's message (rule 4); ``texts``: the message_text of every row."""
    out = set()
    for piece in message_pieces(row):
        flat = [w for clause in piece for w in clause]
        for n in range(QUOTE_WORDS, len(flat) + 1):
            out.update(" ".join(run) for run in (flat[i:i + n] for i in range(len(flat) - n + 1))
                       if content(run) >= 2)
        out.update(" ".join(clause) for clause in piece if len(clause) >= 2 and content(clause) >= 1)
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
    known = [()]
    for table in tables:
        known = [parts + (e.id,) for parts in known for e in table]
    known = ["-".join(parts) for parts in known]
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


def check_row(row: Row, refs: list[Ref], texts: list[str], common: set[str], mods: dict[str, Module]) -> None:
    """Check one row by the rule above; raise AssertionError saying what is wrong. ``texts``: the
    message_text of every row; ``common``: common_stems(mods)."""
    if not refs:
        raise AssertionError(f"no test cited; cite one or write `{UNTESTED}`")
    wanted = quotes(row, texts)
    about = stems(f"{row.case} {row.message}") - common
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
            raise AssertionError(f"`{ref.text}`: {why}, and its name is not close to the row's case and outcome "
                                 f"({NAME_WORDS} telling words)")
    if wanted and not quoted:
        raise AssertionError(f"no quote of the row's message in {', '.join(r.text for r in refs)}")


def check_document(text: str, mods: dict[str, Module]) -> tuple[list[str], int, list[str]]:
    """(what is wrong, how many rows, the rows without a test) of a catalogue's text."""
    problems, untested, previous = [], [], None
    table = table_rows(text)
    texts, common = [message_text(r) for r in table], common_stems(mods)
    for row in table:
        where = f"docs/bad-input.md:{row.line}: {row.case[:60]}"
        if row.tests == UNTESTED:
            untested.append(where)
            previous = None
            continue
        try:
            refs = parse_refs(row.tests, previous)
        except ValueError as e:
            problems.append(f"{where}: {e}")
            previous = None
            continue
        previous = next((r for r in refs if r.name), None)
        try:
            check_row(row, refs, texts, common, mods)
        except AssertionError as e:
            problems.append(f"{where}: {e}")
    return problems, len(table), untested


# --- the tests of the catalogue -------------------------------------------------------------------

@lru_cache(maxsize=None)
def checked_doc() -> tuple[list[str], int, list[str]]:
    return check_document(DOC.read_text(), parsed_tests())


def test_every_row_cites_tests_that_exist_and_exercise_it():
    problems, n_rows, _ = checked_doc()
    assert n_rows > 50, f"only {n_rows} rows read from {DOC}: has the table format changed?"
    assert not problems, "\n".join(problems)


def test_few_rows_are_without_a_test():
    _, _, untested = checked_doc()
    assert len(untested) <= MAX_UNTESTED, (f"{len(untested)} rows say {UNTESTED!r}, at most {MAX_UNTESTED} may: "
                                           "write a test for the new one\n" + "\n".join(untested))


def test_the_intro_says_that_this_module_checks_the_citations():
    assert "tests/test_catalogue.py" in DOC.read_text().split("\n|", 1)[0]


SYNTHETIC = """
| Case | What the user sees | Test |
|---|---|---|
| Training table missing | `error: <root>/train.csv: file not found` | `test_missing_train_csv` |
| {case} | {says} | {test} |
"""


def synthetic(says: str, test: str, case: str = "A case", mods: dict | None = None) -> tuple[list[str], list[str]]:
    problems, rows, untested = check_document(SYNTHETIC.format(case=case, says=says, test=test),
                                              parsed_tests() if mods is None else mods)
    assert rows == 2
    return problems, untested


EMPTY = "`error: <root>/train.csv: the file is empty`"


@pytest.mark.parametrize("case, says, test", [
    ("A case", EMPTY, "`test_empty_csv[zero_bytes]`"),
    ("A case", "`error: <root>/train.csv: no rows`", "`tests/test_data_errors.py::test_empty_csv[header_only]`"),
    ("A case", "`error: <root>/train.csv: missing column(s) sex (has: ...)`", "`test_missing_column[sex]`"),  # f-string
    ("A case", "`error: x: column 'target' must be 0/1`", "`test_non_binary_target[...]` (a comment)"),
    ("A case", "`error: <root>/train.csv: file not found`", "`tests/test_data_errors.py`"),
    ("A case", "`error: <root>/train: 7 image(s) cannot be decoded: ...`",
     "`test_undecodable_images_fail_by_default[corrupt\\|trunc*]`"),  # \| in a cell
    ("Grayscale or CMYK images", "nothing: converted", "`test_grayscale_rgba_palette_cmyk_images_are_cached_as_rgb`"),
    ("A case", "anything", UNTESTED),
])
def test_the_checker_passes_a_true_row(case, says, test):
    problems, untested = synthetic(says, test, case)
    assert problems == [] and len(untested) == (test == UNTESTED)


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
    problems, _ = synthetic(EMPTY, test)
    assert len(problems) == 1 and says in problems[0], problems


def test_the_checker_fails_a_behaviour_row_citing_a_test_of_something_else():
    problems, _ = synthetic("nothing: converted", "`test_missing_images_are_all_listed_at_once`",
                            case="Grayscale or CMYK images")
    assert len(problems) == 1 and "the row quotes no message, and its name is not close" in problems[0], problems


def test_a_name_in_two_files_must_be_qualified(tmp_path):
    for name in ("test_a", "test_b"):
        (tmp_path / f"{name}.py").write_text('def test_x():\n    assert "the file is empty" in message()\n')
    mods = {p.stem: load_module(p) for p in sorted(tmp_path.glob("*.py"))}
    problems, _ = synthetic(EMPTY, "`test_x`", mods=mods)
    assert len(problems) == 2 and "test_x is in test_a.py, test_b.py: write tests/x.py::test_x" in problems[1]
    problems, _ = synthetic(EMPTY, "`tests/test_b.py::test_x`", mods=mods)
    assert len(problems) == 1 and "test_missing_train_csv" in problems[0]  # the first row's test is not in mods
