"""The layers of docs/architecture.md, kept: every import in the package (module level and inside functions)
points down the layer order, and no set of modules imports itself round a cycle."""

import ast
import io
import tokenize
from pathlib import Path

import robench

# Bottom to top. A module may import from its own layer or any layer below it. checkpoints sits above nn
# (loading a checkpoint builds its architecture). results (what a stored run means) and the archives (runs
# to and from files) sit below the engine, which writes runs and drives the CI gate, and below reporting,
# which reads them.
LAYERS = [
    [
        "robench._version",
        "robench.errors",
        "robench.registry",
        "robench.stats",
        "robench.norms",
        "robench.files",
        "robench.text",
    ],
    ["robench.config"],
    ["robench.store", "robench.metadata", "robench.pt2", "robench.data"],
    ["robench.nn"],
    ["robench.checkpoints"],
    ["robench.attacks"],
    ["robench.results", "robench.archive", "robench.archive_validate"],
    ["robench.engine"],
    ["robench.training"],
    ["robench.reporting"],
    ["robench.api"],
    ["robench.cli_output", "robench.cli_progress", "robench.cli", "robench.__main__"],
    ["robench"],  # the package itself: its __init__ gathers the public API
]
ROOT = Path(robench.__file__).parent


def _module(path: Path) -> str:
    parts = ("robench",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best, level = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, level = len(name), i
    assert level is not None, f"{module} is in no layer; add it to LAYERS"
    return level


def _imports(path: Path, module: str) -> set[str]:
    """The robench modules ``module`` imports, wherever the import statement is."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "robench"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "robench":
                continue
            for a in node.names:  # "from . import api" names a module; "from .x import y" names x
                sub = f"{target}.{a.name}"
                out.add(
                    sub
                    if (ROOT.parent / (sub.replace(".", "/") + ".py")).exists()
                    or (ROOT.parent / sub.replace(".", "/")).is_dir()
                    else target
                )
    out.discard(module)
    return out


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p, _module(p)) for p in sorted(ROOT.rglob("*.py"))}


def test_every_import_points_down_the_layers():
    upward = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m, targets in _graph().items()
        for t in sorted(targets)
        if _layer(t) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


# What a page shows is a function of the store alone: reporting reads runs and what the store recorded
# about each model, never a checkpoint file, an attack, a network or the engine.
STORE_ONLY = {"robench.reporting": ("robench.engine", "robench.attacks", "robench.nn", "robench.checkpoints")}


def test_reporting_reads_the_store_only():
    reached = [
        f"{m} imports {t}"
        for m, targets in _graph().items()
        for layer, banned in STORE_ONLY.items()
        if m == layer or m.startswith(layer + ".")
        for t in sorted(targets)
        if any(t == b or t.startswith(b + ".") for b in banned)
    ]
    assert not reached, "\n".join(reached)


def test_no_modules_import_each_other_round_a_cycle():
    graph = _graph()
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_layer_check_catches_an_upward_import(tmp_path):
    # the checker itself: a module of the engine importing the reporting layer is found
    fake = ROOT / "engine" / "evaluate.py"
    targets = _imports(fake, "robench.engine.evaluate")
    assert all(_layer(t) <= _layer("robench.engine.evaluate") for t in targets)
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from ..reporting.leaderboard import markdown\n")
    assert _imports(src, "robench.engine.x") == {"robench.reporting.leaderboard"}
    assert _layer("robench.reporting.leaderboard") > _layer("robench.engine.x")


def _statements(text: str) -> int:
    """The logical lines of a module (what Python counts as one line: a statement or a clause header),
    which the formatter never changes however many physical lines it spreads one statement over."""
    return sum(tok.type == tokenize.NEWLINE for tok in tokenize.generate_tokens(io.StringIO(text).readline))


def test_a_module_over_the_size_guide_says_why_in_its_docstring():
    """docs/architecture.md's guide: a module holds one concept and stays under about 400 lines; one that is
    longer gives its reason in its docstring, where the next reader looks. The guide's lines were counted in
    the compact style the code had before `ruff format`, which spreads a call or a tuple over one line per
    argument; the test counts statements instead, 300 of which made about 400 of those lines."""
    unexplained = []
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if _statements(text) > 300 and "Over the ~400-line guide" not in doc:
            unexplained.append(f"{_module(path)}: {_statements(text)} statements")
    assert not unexplained, "\n".join(unexplained)
