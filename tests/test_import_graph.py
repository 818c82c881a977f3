"""The import graph is a ladder: no cycle between modules or between packages, and the library never imports a
program. Every ``import`` statement counts, also those inside functions (a lazy import still ties two modules).

Layers, bottom to top: ``hsr_tf`` (library) < ``data_prep`` < ``experiments`` < ``benchmarks``. Packages are the
second level of a dotted name (``hsr_tf.geometry``, ``hsr_tf.losses``, ``experiments.common``, ``data_prep.synth``).
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("hsr_tf", "data_prep", "experiments", "benchmarks")


def module_files(root, tops=LAYERS):
    """{dotted module name: path} of every .py file below ``root/<top>``."""
    mods = {}
    for top in tops:
        for d, _, files in os.walk(os.path.join(root, top)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(d, f), root)[:-3].replace(os.sep, ".")
                mods[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, f)
    return mods


def import_graph(mods):
    """{module: set of project modules it imports}; an import of a name inside a module counts as the module."""

    def resolve(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        package = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(resolve(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                # "from pkg import mod" imports the module pkg.mod; "from mod import name" the module mod
                targets.update(resolve(f"{base}.{a.name}") if f"{base}.{a.name}" in mods else resolve(base)
                               for a in node.names)
        targets.discard(None)
        targets.discard(mod)
        graph[mod] = targets
    return graph


def package_of(mod):
    return ".".join(mod.split(".")[:2])


def package_graph(graph):
    """Edges between packages (a package importing its own modules is no edge)."""
    out = {}
    for mod, targets in graph.items():
        for t in targets:
            if package_of(mod) != package_of(t):
                out.setdefault(package_of(mod), set()).add(package_of(t))
    return out


def cycles(graph):
    """Strongly connected components with more than one node (Tarjan, iterative), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph(module_files(REPO))


def test_parser_sees_known_edges(graph):
    # the checks below are only as good as the edges found: known imports (top level, lazy, "from pkg import mod")
    assert "hsr_tf.hand_model.palm_frame" in graph["hsr_tf.models.hand_shape_net"]
    assert "hsr_tf.train.real_evaluation" in graph["experiments.real_common"]    # inside a function
    assert "experiments.real_common" in graph["experiments.evaluate_real"]
    assert "hsr_tf.geometry.rotations" in graph["hsr_tf.hand_model.layer"]
    assert len(graph) > 60


def test_cycle_finder_on_a_made_up_tree(tmp_path):
    pkg = tmp_path / "hsr_tf"
    (pkg / "a").mkdir(parents=True)
    (pkg / "b").mkdir()
    for p in (pkg / "__init__.py", pkg / "a" / "__init__.py", pkg / "b" / "__init__.py"):
        p.write_text("")
    (pkg / "a" / "x.py").write_text("from hsr_tf.b import y\n")
    (pkg / "b" / "y.py").write_text("import numpy\n")
    (pkg / "b" / "z.py").write_text("def f():\n    from . import y\n    from hsr_tf.a.x import something\n")
    g = import_graph(module_files(str(tmp_path), ("hsr_tf",)))
    assert g["hsr_tf.a.x"] == {"hsr_tf.b.y"} and g["hsr_tf.b.z"] == {"hsr_tf.b.y", "hsr_tf.a.x"}
    assert cycles(g) == []                                            # modules: no cycle
    assert cycles(package_graph(g)) == [["hsr_tf.a", "hsr_tf.b"]]     # packages: a -> b -> a


def test_no_module_cycles(graph):
    assert cycles(graph) == []


def test_no_package_cycles(graph):
    assert cycles(package_graph(graph)) == []


def test_layers_import_only_downwards(graph):
    rank = {top: i for i, top in enumerate(LAYERS)}
    upward = sorted((m, t) for m, ts in graph.items() for t in ts
                    if rank[t.split(".")[0]] > rank[m.split(".")[0]])
    assert upward == []
