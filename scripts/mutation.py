"""Sampled mutation testing: do the tests fail when the code is wrong?

    python scripts/mutation.py                  # 300 mutants, seed 0, over core/, stages/, io/
    python scripts/mutation.py -n 10 --seed 1   # a quick look
    python scripts/mutation.py --resume         # go on from the results file after an interruption
    python scripts/mutation.py --rev R --tests-rev HEAD --survivors   # R's survivors against newer tests

A small AST mutator (mutmut 3 does not fit this layout). Every mutation point of the modules under
`--paths` is listed, `-n` are sampled (`--seed`), and each is applied to a PRIVATE copy of the repo
(`git archive` of `--rev`, default HEAD, under `--workdir`; never the checkout the command is run
from): write the mutant, run the tests that exercise the module, restore the original (always:
on failure, Ctrl-C, SIGTERM or timeout too). Operators: comparison flips (< <=, > >=, == !=,
in / not in, is / is not), and <-> or, + <-> -, constants (numbers +-1, True <-> False,
strings -> ""), `return X` -> `return None` in functions typed to return non-None, and removing one
statement of a function body. Docstrings, annotations, f-string parts and `description=`/`help=`
texts (documentation) are not mutated.

Which tests: the baseline run (all default test files on the unmutated copy) is traced, so each
line of datacraft is known with the test files that ran it (subprocesses the tests start included,
via a sitecustomize.py in the copy). A mutant inside a function runs the test files that ran its
lines, quickest first, as `pytest -x -q -p no:cacheprovider -m "not slow and not gpu"`; one on lines
no test runs survives without a run (reported as "not covered"). Module-level code runs once, at
import, so it is mapped statically: the test files that name the module (its import path, or the
registered name of a stage it defines, also through a config or a test helper), then those of the
modules importing it (`--depth`), then `ALWAYS`; a test file slower than `--heavy` only for the
module it is about. The baseline also gives each file's time (a mutant's timeout is 3x the time of
its files + 60 s; a timeout counts as killed) and the tests that already fail there (deselected,
and reported); it is rerun only for test files (or code) that changed.

Test runs are forked from a parent that has imported the heavy third-party libraries once (not
datacraft), which saves ~5 s a run; `--no-fork` runs each in a fresh interpreter instead.
Mutants listed in `--equivalent` (id, then `#` and a reason) are reported apart and left out of the
kill rate. The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATHS = ("datacraft/core", "datacraft/stages", "datacraft/io")
ALWAYS = ("tests/test_contract.py",)  # the stage contract: every stage goes through it
PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow and not gpu"]
DOC_KEYWORDS = {"description", "help"}
WRAPPER_FAILED = 99
HEAVY = ("numpy", "polars", "pyarrow", "pydantic", "yaml", "httpx", "fastapi", "uvicorn", "apache_beam", "torch",
         "scipy", "faiss", "numba", "transformers", "sentence_transformers", "model2vec", "typer", "rich", "pytest",
         "pytest_timeout", "hypothesis", "matplotlib")


# -- mutants ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mutant:
    id: str  # path:line:col:operator:what, stable for one version of the file
    path: str
    line: int
    operator: str
    what: str
    start: tuple[int, int]  # (line, col) of the replaced source segment, col in bytes
    end: tuple[int, int]
    replacement: str
    span: tuple[int, int]  # lines whose execution means the mutated code ran (statement start .. node end)
    in_function: bool  # runs when a function is called (else at import: module / class body)


CMP_FLIPS: dict[type, type] = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                               ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
BIN_FLIPS: dict[type, type] = {ast.Add: ast.Sub, ast.Sub: ast.Add}
SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.In: "in",
          ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not", ast.Add: "+", ast.Sub: "-", ast.And: "and", ast.Or: "or"}


class _Finder(ast.NodeVisitor):
    """Collects the mutation points of one module."""

    def __init__(self, path: str, source: str) -> None:
        self.path, self.lines, self.out = path, source.splitlines(keepends=True), []
        self.skip: set[int] = set()  # ids of nodes not to mutate (docs, annotations)
        self.functions: list[ast.AST] = []
        self.stmts: list[ast.stmt] = []

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.stmt):
            self.stmts.append(node)
        try:
            super().visit(node)
        finally:
            if isinstance(node, ast.stmt):
                self.stmts.pop()

    def add(self, node: ast.AST, operator: str, what: str, replacement: str, in_function: bool | None = None) -> None:
        start, end = (node.lineno, node.col_offset), (node.end_lineno, node.end_col_offset)
        first = node.lineno if isinstance(node, ast.stmt) else min(self.stmts[-1].lineno, node.lineno)
        mid = f"{self.path}:{node.lineno}:{node.col_offset}:{operator}:{what}"
        inside = bool(self.functions) if in_function is None else in_function
        if any(_compiled(fn) for fn in self.functions):
            inside = False  # numba-compiled: the tracer cannot see its lines, so map it statically
        self.out.append(Mutant(mid, self.path, node.lineno, operator, what, start, end, replacement, (first, node.end_lineno), inside))

    def _skip_tree(self, node: ast.AST | None) -> None:
        if node is not None:
            self.skip.update(id(n) for n in ast.walk(node))

    def _docstring(self, body: list[ast.stmt]) -> None:
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            self._skip_tree(body[0])

    def visit_Module(self, node: ast.Module) -> None:
        self._docstring(node.body)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._docstring(node.body)
        for n in node.decorator_list:
            self._skip_tree(n)
        self.generic_visit(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._docstring(node.body)
        self._skip_tree(node.returns)
        for a in [*node.args.args, *node.args.posonlyargs, *node.args.kwonlyargs, node.args.vararg, node.args.kwarg]:
            if a is not None:
                self._skip_tree(a.annotation)
        for n in node.decorator_list:
            self._skip_tree(n)
        self.functions.append(node)
        self._statements(node)
        self.generic_visit(node)
        self.functions.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._skip_tree(node.annotation)
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self._skip_tree(node)  # f-string parts have no reliable positions in 3.11

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg in DOC_KEYWORDS:
            self._skip_tree(node.value)
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        if id(node) not in self.skip:
            for i, op in enumerate(node.ops):
                flip = CMP_FLIPS.get(type(op))
                if flip:
                    ops = list(node.ops)
                    ops[i] = flip()
                    new = ast.Compare(left=node.left, ops=ops, comparators=node.comparators)
                    self.add(node, "cmp", f"{SYMBOL[type(op)]}->{SYMBOL[flip]}#{i}", f"({ast.unparse(new)})")
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        if id(node) not in self.skip:
            flip = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self.add(node, "bool", f"{SYMBOL[type(node.op)]}->{SYMBOL[type(flip)]}", f"({ast.unparse(ast.BoolOp(op=flip, values=node.values))})")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        flip = BIN_FLIPS.get(type(node.op))
        if flip and id(node) not in self.skip:
            self.add(node, "arith", f"{SYMBOL[type(node.op)]}->{SYMBOL[flip]}", f"({ast.unparse(ast.BinOp(left=node.left, op=flip(), right=node.right))})")
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        flip = BIN_FLIPS.get(type(node.op))
        if flip and id(node) not in self.skip:
            new = ast.AugAssign(target=node.target, op=flip(), value=node.value)
            self.add(node, "arith", f"{SYMBOL[type(node.op)]}=->{SYMBOL[flip]}=", ast.unparse(new))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if id(node) in self.skip:
            return
        v = node.value
        if isinstance(v, bool):
            self.add(node, "const", f"{v}->{not v}", repr(not v))
        elif isinstance(v, int | float):
            for delta in (1, -1):
                self.add(node, "const", f"{v!r}{delta:+d}", repr(v + delta))
        elif isinstance(v, str) and v:
            self.add(node, "const", "str->''", '""')

    def visit_Return(self, node: ast.Return) -> None:
        fn = self.functions[-1] if self.functions else None
        if (fn is not None and node.value is not None and id(node) not in self.skip and _returns_non_none(fn)
                and not (isinstance(node.value, ast.Constant) and node.value.value is None)):
            self.add(node.value, "return-none", "->None", "None")
        self.generic_visit(node)

    def _statements(self, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        """Removing one statement (anywhere in the function's own body, not in nested defs)."""
        for stmt in _own_statements(fn.body):
            if id(stmt) in self.skip or isinstance(stmt, ast.Pass | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Global | ast.Nonlocal):
                continue
            line = self.lines[stmt.lineno - 1]
            tail = self.lines[stmt.end_lineno - 1][stmt.end_col_offset:] if stmt.end_lineno <= len(self.lines) else ""
            if line[: stmt.col_offset].strip() or tail.split("#")[0].strip():  # shares a line: `a; b`, `if x: y`
                continue
            self.add(stmt, "delete", type(stmt).__name__, "pass", in_function=True)


def _compiled(fn: ast.AST) -> bool:
    """Decorated with numba's `jit` / `njit` (its body runs as machine code)."""
    names = [ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in getattr(fn, "decorator_list", [])]
    return any(n.split(".")[-1] in ("jit", "njit", "vectorize", "guvectorize") for n in names)


def _own_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    out = []
    for stmt in body:
        out.append(stmt)
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for field in ("body", "orelse", "finalbody"):
            out.extend(_own_statements(getattr(stmt, field, []) or []))
        for handler in getattr(stmt, "handlers", []) or []:
            out.extend(_own_statements(handler.body))
        for case in getattr(stmt, "cases", []) or []:
            out.extend(_own_statements(case.body))
    return out


def _returns_non_none(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    if fn.returns is None:
        return False
    text = ast.unparse(fn.returns)
    if re.search(r"\b(None|Optional|Any|object|Iterator|Iterable|Generator)\b", text):
        return False
    own = [n for n in ast.walk(fn) if isinstance(n, ast.Yield | ast.YieldFrom)]
    return not own


def mutants_of(root: Path, rel: str) -> list[Mutant]:
    source = (root / rel).read_text(encoding="utf-8")
    finder = _Finder(rel, source)
    finder.visit(ast.parse(source))
    return finder.out


def apply(source: str, m: Mutant) -> str:
    """The source with the mutant's segment replaced (positions are utf-8 byte columns)."""
    data = source.encode("utf-8")
    lines = data.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    a = offsets[m.start[0] - 1] + m.start[1]
    b = offsets[m.end[0] - 1] + m.end[1]
    out = (data[:a] + m.replacement.encode("utf-8") + data[b:]).decode("utf-8")
    ast.parse(out)  # a mutant must compile
    return out


# -- which tests --------------------------------------------------------------------------------
def module_name(rel: str) -> str:
    return rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def stage_names(source: str) -> set[str]:
    """Registered names of the stages a module defines (`name = "..."` in a class body)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                        and stmt.targets[0].id == "name" and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)):
                    names.add(stmt.value.value)
    return names


def imports_of(source: str, rel: str) -> set[str]:
    """Dotted datacraft modules a module imports (`from x import y` counts x and x.y)."""
    out: set[str] = set()
    package = module_name(rel).rsplit(".", 1)[0] if not rel.endswith("__init__.py") else module_name(rel)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m.startswith("datacraft")}


class TestMap:
    """Module → the test files that exercise it, most direct first."""

    def __init__(self, root: Path, depth: int) -> None:
        self.root, self.depth = root, depth
        tests = root / "tests"
        self.texts = {}
        helpers = {p.stem: p.read_text(encoding="utf-8") for p in tests.glob("*.py") if not p.name.startswith("test_")}
        configs = {p.name: p.read_text(encoding="utf-8") for p in (root / "configs").glob("*.yaml")}
        for p in sorted(tests.glob("test_*.py")):
            text = p.read_text(encoding="utf-8")
            extra = [h for name, h in helpers.items() if re.search(rf"\bfrom \.{name} import|\bimport {name}\b|\b{name}\.", text)]
            extra += [c for name, c in configs.items() if name in text]
            self.texts[str(p.relative_to(root))] = "\n".join([text, *extra])
        self.modules = {str(p.relative_to(root)): p.read_text(encoding="utf-8") for p in (root / "datacraft").rglob("*.py")}
        self.importers: dict[str, set[str]] = {}
        for rel, src in self.modules.items():
            for imported in imports_of(src, rel):
                self.importers.setdefault(imported, set()).add(module_name(rel))
        self.rel_of = {module_name(rel): rel for rel in self.modules}

    def direct(self, rel: str) -> list[str]:
        dotted = module_name(rel)
        head, _, tail = dotted.rpartition(".")
        patterns = [rf"\b{re.escape(dotted)}\b", rf"from {re.escape(head)} import [^\n]*\b{re.escape(tail)}\b"]
        for name in stage_names(self.modules[rel]):
            patterns.append(rf"[\"']{re.escape(name)}[\"']|name:\s*{re.escape(name)}\b")
        rx = re.compile("|".join(patterns))
        stem = Path(rel).stem
        hits = [t for t, text in self.texts.items() if rx.search(text)]
        return sorted(hits, key=lambda t: (stem not in t, t))  # test_<module> first

    def about(self, rel: str, test: str) -> bool:
        """Whether a test file is about this module: named after it, or naming a stage it defines."""
        if Path(rel).stem in Path(test).stem.split("_"):
            return True
        return any(re.search(rf"[\"']{re.escape(n)}[\"']", self.texts[test]) for n in stage_names(self.modules[rel]))

    def tests_for(self, rel: str) -> list[list[str]]:
        """Test files by distance: the module's own, its importers', ... and last `ALWAYS`."""
        levels: list[list[str]] = []
        seen_tests: set[str] = set()
        level, seen = [module_name(rel)], {module_name(rel)}
        for _ in range(self.depth + 1):
            found = [t for mod in level if mod in self.rel_of for t in self.direct(self.rel_of[mod])]
            levels.append(list(dict.fromkeys(t for t in found if t not in seen_tests)))
            seen_tests.update(found)
            nxt = sorted({imp for mod in level for imp in self.importers.get(mod, ())} - seen)
            seen.update(nxt)
            level = nxt
        levels.append([t for t in ALWAYS if t not in seen_tests])
        return [lv for lv in levels if lv]


# -- line coverage of the baseline (which test file runs which line) --------------------------------
# Written into the private copy as sitecustomize.py: with DC_MUT_TRACE_OUT set, every Python process
# started there (the baseline run and the subprocesses its tests start) records the datacraft lines
# it runs, per test file (pytest loads this module as a plugin: `-p sitecustomize`).
TRACER = """
import os
import sys
import threading

current = [os.environ.get("DC_MUT_TEST", "<import>")]
hits = {}
if os.environ.get("DC_MUT_TRACE_OUT"):
    _root = os.environ["DC_MUT_TRACE_ROOT"]

    def _local(frame, event, arg):
        if event == "line":
            hits.setdefault(current[0], set()).add((frame.f_code.co_filename, frame.f_lineno))
        return _local

    def _global(frame, event, arg):
        if frame.f_code.co_filename.startswith(_root):
            hits.setdefault(current[0], set()).add((frame.f_code.co_filename, frame.f_lineno))
            return _local
        return None

    sys.settrace(_global)
    threading.settrace(_global)

    def dump():
        import json
        sys.settrace(None)
        threading.settrace(None)
        out = {k: sorted(v) for k, v in list(hits.items())}
        with open(os.path.join(os.environ["DC_MUT_TRACE_OUT"], f"{os.getpid()}.json"), "w") as f:
            json.dump(out, f)

    import atexit
    atexit.register(dump)


def pytest_runtest_logstart(nodeid, location):
    current[0] = os.environ["DC_MUT_TEST"] = nodeid.split("::")[0]
"""


def read_traces(trace_dir: Path, workdir: Path) -> dict[str, dict[int, set[str]]]:
    """{module path: {line: test files that ran it}} from the traces of every process."""
    cover: dict[str, dict[int, set[str]]] = {}
    prefix = str(workdir) + os.sep
    for f in trace_dir.glob("*.json"):
        for test, lines in json.loads(f.read_text()).items():
            if not test.startswith("tests/"):
                continue  # imports during collection: module-level code, mapped statically
            for filename, line in lines:
                if filename.startswith(prefix):
                    cover.setdefault(filename[len(prefix):], {}).setdefault(line, set()).add(test)
    return cover


# -- running ------------------------------------------------------------------------------------
class Runner:
    """Runs pytest on the private copy, forked from a warm parent or as a fresh interpreter."""

    def __init__(self, workdir: Path, fork: bool) -> None:
        self.workdir, self.fork = workdir, fork
        self.env = {**os.environ, "PYTHONPATH": str(workdir), "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false"}
        if fork:
            for name in HEAVY:
                with contextlib.suppress(Exception):
                    __import__(name)
            assert not any(m == "datacraft" or m.startswith("datacraft.") for m in sys.modules), "datacraft imported in the parent"

    def check_copy(self) -> None:
        """The tests must import datacraft from the private copy, not from the editable install."""
        code = "import datacraft, pathlib; print(pathlib.Path(datacraft.__file__).resolve())"
        out = subprocess.run([sys.executable, "-c", code], cwd=self.workdir, env=self.env, capture_output=True, text=True, check=True).stdout
        assert Path(out.strip()).is_relative_to(self.workdir.resolve()), f"datacraft imported from {out.strip()}, not the copy"

    def run(self, args: list[str], timeout: float, log: Path | None = None, trace: Path | None = None) -> tuple[str, float]:
        """'passed', 'failed' or 'timeout', and the seconds it took (pytest's output goes to `log`);
        with `trace`, every process records the lines it runs there."""
        t0 = time.monotonic()
        log = log or self.workdir / "last-run.log"
        env = dict(self.env)
        if trace is not None:
            (self.workdir / "sitecustomize.py").write_text(TRACER, encoding="utf-8")
            env.update(DC_MUT_TRACE_OUT=str(trace), DC_MUT_TRACE_ROOT=str(self.workdir / "datacraft") + os.sep)
            args = ["-p", "sitecustomize", *args]
        if self.fork:
            pid = os.fork()
            if pid == 0:  # child: a fresh process group, datacraft from the copy
                code = WRAPPER_FAILED
                try:
                    os.setpgid(0, 0)
                    os.chdir(self.workdir)
                    os.environ.update(env)
                    sys.dont_write_bytecode = True
                    sys.path.insert(0, str(self.workdir))
                    if trace is not None:
                        import sitecustomize  # (the parent found none: the copy's, which starts tracing)
                    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(out, 1)
                    os.dup2(out, 2)
                    import pytest

                    code = int(pytest.main(args))
                    if trace is not None:
                        sitecustomize.dump()  # os._exit skips atexit
                finally:
                    os._exit(code)
            return self._wait(pid, timeout, t0)
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=self.workdir, env=env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            return "timeout", time.monotonic() - t0
        finally:
            if proc.poll() is None:
                _kill_group(proc.pid)
        return _outcome(rc), time.monotonic() - t0

    def _wait(self, pid: int, timeout: float, t0: float) -> tuple[str, float]:
        try:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    rc = os.waitstatus_to_exitcode(status)
                    _kill_group(pid)  # leftovers of the child (servers, workers)
                    return _outcome(rc), time.monotonic() - t0
                if time.monotonic() - t0 > timeout:
                    _kill_group(pid)
                    os.waitpid(pid, 0)
                    return "timeout", time.monotonic() - t0
                time.sleep(0.2)
        except BaseException:
            _kill_group(pid)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            raise


def _outcome(rc: int) -> str:
    if rc in (4, WRAPPER_FAILED):  # pytest usage error / the forked child never reached pytest: not the mutant
        raise RuntimeError(f"the test run could not start (exit {rc}); see its log")
    return {0: "passed", 5: "no tests"}.get(rc, "failed")  # 5: pytest collected nothing (all slow / gpu)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def mutated(path: Path, text: str):
    """The file holds `text` inside the block and its original bytes after it, whatever happens."""
    original = path.read_bytes()
    cached = list(path.parent.glob(f"__pycache__/{path.stem}.*.pyc"))
    for pyc in cached:
        pyc.unlink()
    try:
        path.write_text(text, encoding="utf-8")
        yield
    finally:
        path.write_bytes(original)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# -- the run ------------------------------------------------------------------------------------
def make_copy(rev: str, tests_rev: str, workdir: Path) -> tuple[str, str]:
    """A fresh private copy of `rev` (tracked files only), `tests/` from `tests_rev`; returns both commits."""
    def commit_of(r: str) -> str:
        return subprocess.run(["git", "rev-parse", f"{r}^{{commit}}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    def extract(commit: str, *paths: str) -> None:
        archive = subprocess.Popen(["git", "archive", commit, *paths], cwd=ROOT, stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(workdir)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise RuntimeError(f"git archive {commit} failed")

    code, tests = commit_of(rev), commit_of(tests_rev)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    extract(code)
    if tests != code:
        shutil.rmtree(workdir / "tests")
        extract(tests, "tests")
    return code, tests


def tree_hash(root: Path, parts: list[Path]) -> str:
    h = hashlib.sha256()
    for part in parts:
        for p in sorted(part.rglob("*")) if part.is_dir() else [part]:
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def load_equivalent(path: Path) -> dict[str, str]:
    out = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            mid, _, reason = line.partition("#")
            if mid.strip():
                out[mid.strip()] = reason.strip()
    return out


def junit_times(xml_path: Path) -> tuple[dict[str, float], list[str]]:
    """Seconds per test file and the node ids that failed, from a junit report."""
    times: dict[str, float] = {}
    failed = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        if not cls:  # a module that cannot even be collected: name = its dotted path
            failed.append(name.replace(".", "/") + ".py")
            continue
        parts = cls.split(".")
        at = next((i for i, p in enumerate(parts) if p.startswith("test_")), len(parts) - 1)
        file = "/".join(parts[: at + 1]) + ".py"
        times[file] = times.get(file, 0.0) + float(case.get("time", 0) or 0)
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append("::".join([file, *parts[at + 1:], name]))
    return times, failed


def save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=300, help="mutants to sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--paths", nargs="+", default=list(DEFAULT_PATHS))
    ap.add_argument("--rev", default="HEAD", help="the commit whose code is mutated (and whose tests run)")
    ap.add_argument("--tests-rev", default=None, help="take tests/ from this commit instead (new tests on pinned code)")
    ap.add_argument("--heavy", type=float, default=60.0, help="a test file slower than this (s) runs only for its own module")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "datacraft-mutation")
    ap.add_argument("--results", type=Path, default=ROOT / "out" / "mutation.json")
    ap.add_argument("--equivalent", type=Path, default=ROOT / "scripts" / "mutation_equivalent.txt")
    ap.add_argument("--depth", type=int, default=1, help="levels of importers whose tests also run")
    ap.add_argument("--resume", action="store_true", help="keep the results of mutants already run")
    ap.add_argument("--only", nargs="*", default=None, help="run just these mutant ids again")
    ap.add_argument("--survivors", action="store_true", help="run the survivors of the results file again (after a test change)")
    ap.add_argument("--no-fork", action="store_true", help="a fresh interpreter per test run")
    ap.add_argument("--list", action="store_true", help="print the sampled mutants and stop")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)

    workdir, args.results, args.equivalent = args.workdir.resolve(), args.results.resolve(), args.equivalent.resolve()
    if workdir == ROOT or ROOT.is_relative_to(workdir):
        raise SystemExit("--workdir must be a private folder, not the checkout")
    commit, tests_commit = make_copy(args.rev, args.tests_rev or args.rev, workdir)
    files = sorted(str(p.relative_to(workdir)) for d in args.paths for p in (workdir / d).rglob("*.py"))
    every = [m for rel in files for m in mutants_of(workdir, rel)]
    sample = random.Random(args.seed).sample(every, min(args.n, len(every)))
    if args.list:
        for m in sample:
            print(m.id, "→", m.replacement[:80])
        return 0
    equivalent = load_equivalent(args.equivalent)

    keep = args.resume or args.survivors or args.only is not None
    state = json.loads(args.results.read_text()) if keep and args.results.exists() else {}
    hashes = {rel: hashlib.sha256((workdir / rel).read_bytes()).hexdigest()[:16] for rel in files}
    results: dict[str, dict] = {k: v for k, v in state.get("mutants", {}).items() if v.get("file_hash") == hashes.get(v["path"])}
    if state and len(results) < len(state.get("mutants", {})):
        print(f"note: {len(state['mutants']) - len(results)} earlier results are for files that changed since; not kept")
    state.update({"commit": commit, "tests_commit": tests_commit, "seed": args.seed, "n": len(sample), "paths": args.paths,
                  "points": len(every)})

    runner = Runner(workdir, fork=not args.no_fork)
    runner.check_copy()
    tmap = TestMap(workdir, args.depth)
    levels_of = {rel: tmap.tests_for(rel) for rel in {m.path for m in sample}}

    # baseline: every test file on the unmutated copy, traced (again only for files that changed)
    env = tree_hash(workdir, [workdir / "datacraft", workdir / "configs", *[p for p in (workdir / "tests").iterdir() if not p.name.startswith("test_")]])
    base: dict[str, dict] = state.get("baseline", {})
    needed = sorted(str(p.relative_to(workdir)) for p in (workdir / "tests").glob("test_*.py"))
    keys = {t: f"{env}:{tree_hash(workdir, [workdir / t])}" for t in needed}
    stale = [t for t in needed if base.get(t, {}).get("key") != keys[t] or "lines" not in base[t]]
    if stale:
        print(f"baseline: {len(stale)} test files on the unmutated copy, traced ...", flush=True)
        xml, trace = workdir / "baseline.xml", workdir / "traces"
        trace.mkdir(exist_ok=True)
        t0 = time.monotonic()
        log = args.results.with_suffix(".baseline.log")
        outcome, _ = runner.run([*PYTEST_ARGS[1:], "--continue-on-collection-errors", f"--junitxml={xml}", *stale],
                                timeout=4 * 3600, log=log, trace=trace)
        times, failed = junit_times(xml) if xml.exists() else ({}, [])
        if outcome != "passed" and not failed:
            raise SystemExit(f"baseline {outcome} without a failing test: see {log}")
        cover = read_traces(trace, workdir)
        for t in stale:
            lines = {path: sorted(n for n, tests in by_line.items() if t in tests) for path, by_line in cover.items()}
            base[t] = {"key": keys[t], "seconds": round(times.get(t, 0.0), 1), "failed": [f for f in failed if f.startswith(t + "::")],
                       "broken": t in failed, "lines": {path: ls for path, ls in lines.items() if ls}}
        state["baseline"] = base
        save(args.results, state)
        print(f"baseline: {outcome} in {time.monotonic() - t0:.0f} s (traced); failing on the unmutated code: {failed or 'none'}", flush=True)
    broken = {t for t in needed if base[t].get("broken")}  # cannot be collected on this code: never run
    if broken:
        print(f"test files that cannot be collected on this code (left out): {sorted(broken)}", flush=True)
    needed = [t for t in needed if t not in broken]
    failing = [f for t in needed for f in base[t]["failed"]]
    deselect = [a for f in failing for a in ("--deselect", f)]
    seconds = {t: base[t]["seconds"] for t in needed}
    covered: dict[tuple[str, int], set[str]] = {}
    for t in needed:
        for path, ls in base[t]["lines"].items():
            for n in ls:
                covered.setdefault((path, n), set()).add(t)

    def tests_for(m: Mutant) -> list[str]:
        """Code in a function: the test files that ran its lines in the baseline. Module-level code (run
        once, at import): the static map, nearest first; a heavy file only for the modules it is about."""
        if m.in_function:
            hit = {t for n in range(m.span[0], m.span[1] + 1) for t in covered.get((m.path, n), ())}
            return sorted(hit, key=seconds.__getitem__)
        return [t for i, lv in enumerate(levels_of[m.path]) for t in sorted((t for t in lv if t in seconds), key=seconds.__getitem__)
                if seconds[t] <= args.heavy or (i == 0 and tmap.about(m.path, t))]

    if args.survivors:
        args.only = [k for k, v in results.items() if v["status"] in ("survived", "equivalent")]
    todo = [m for m in sample if (args.only is None or m.id in args.only) and (m.id not in results or args.only is not None)]
    print(f"{len(every)} mutation points in {len(files)} files; {len(sample)} sampled (seed {args.seed}); {len(todo)} to run", flush=True)
    try:
        for i, m in enumerate(todo, 1):
            path = workdir / m.path
            source = path.read_text(encoding="utf-8")
            try:
                text = apply(source, m)
            except (SyntaxError, ValueError):
                results[m.id] = {**asdict(m), "status": "invalid", "file_hash": hashes[m.path]}
                continue
            tests = tests_for(m)
            budget = 3 * sum(seconds[t] for t in tests) + 60
            if tests:
                with mutated(path, text):
                    outcome, took = runner.run([*PYTEST_ARGS, *deselect, *tests], budget)
            else:
                outcome, took = "not covered", 0.0  # no test runs this code: nothing can notice the change
            status = "killed" if outcome in ("failed", "timeout") else "survived"
            if status == "survived" and m.id in equivalent:
                status = "equivalent"
            results[m.id] = {**asdict(m), "status": status, "how": outcome, "seconds": round(took, 1), "tests": tests,
                             "file_hash": hashes[m.path]}
            state["mutants"] = results
            save(args.results, state)
            print(f"[{i}/{len(todo)}] {status:9s} {m.id}  ({took:.0f} s, {len(tests)} files)", flush=True)
    except KeyboardInterrupt:
        print("interrupted: every file restored; go on with --resume", flush=True)
        save(args.results, {**state, "mutants": results})
        return 130

    return report(sample, results, equivalent, args)


def report(sample: list[Mutant], results: dict[str, dict], equivalent: dict[str, str], args: argparse.Namespace) -> int:
    done = [results[m.id] for m in sample if m.id in results]
    counts = {s: sum(r["status"] == s for r in done) for s in ("killed", "survived", "equivalent", "invalid")}
    scored = counts["killed"] + counts["survived"]
    rate = counts["killed"] / scored if scored else 0.0
    by_op: dict[str, list[int]] = {}
    for r in done:
        if r["status"] in ("killed", "survived"):
            by_op.setdefault(r["operator"], [0, 0])[r["status"] == "killed"] += 1
    print(f"\nkilled {counts['killed']} of {scored} ({rate:.1%}); {counts['equivalent']} equivalent, {counts['invalid']} invalid, "
          f"{len(sample) - len(done)} not run")
    print("by operator (killed/total): " + ", ".join(f"{op} {k}/{k + s}" for op, (s, k) in sorted(by_op.items())))
    survivors = sorted((r for r in done if r["status"] == "survived"), key=lambda r: (r["path"], r["line"]))
    uncovered = sum(r.get("how") == "not covered" for r in survivors)
    if survivors:
        print(f"survivors ({uncovered} on lines no test runs):")
        for r in survivors:
            note = " (not covered)" if r.get("how") == "not covered" else ""
            print(f"  {r['path']}:{r['line']}  {r['operator']:11s} {r['what']}  → {r['replacement'][:70]}{note}   [{r['id']}]")
    for r in (r for r in done if r["status"] == "equivalent"):
        print(f"  equivalent: {r['path']}:{r['line']} {r['operator']} {r['what']}: {equivalent.get(r['id'], '')}")
    print(json.dumps({"kill_rate": round(rate, 4), "killed": counts["killed"], "survived": counts["survived"],
                      "not_covered": uncovered, "equivalent": counts["equivalent"], "invalid": counts["invalid"], "sampled": len(sample),
                      "run": len(done), "seed": args.seed, "paths": args.paths, "results": str(args.results)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
