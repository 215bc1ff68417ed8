"""The layers of Assay, and the rule that a lower layer never imports a higher one.

Layers, lowest first (``LAYERS``): the vocabulary ``assay.vocab`` and the generated
contract ``assay.v1``; the client ``assay.client``; the kernels ``assay.kernels``;
then, inside ``assay.server``: strategies, pools, scaleout and models (peers),
acquisition, edge, wiring. Every ``.py`` under the package roots (``ROOTS``) is
parsed with ``ast`` (nothing is imported), relative imports are resolved to
absolute ``assay.*`` names, and every import counts, those inside functions too:
a lazy import is still a dependency.

Rules, each checked per module-level edge (importer -> imported):

* an edge between layers must be in ``ALLOWED`` (strictly downward; the vocabulary
  imports nothing of Assay; the client imports no server or kernel module);
* no layer below the edge imports ``grpc*`` or ``assay.v1`` (``NO_WIRE``);
* every ``assay.*`` module, and every module imported, belongs to a layer;
* no package imports another package's private (``_name``) module.

Run as a script it prints the import graph: per layer the layers it imports, then
every edge that crosses layers (``!`` marks a violation). ``--rev REV`` prints the
graph of a git revision instead (its flat ``server/*.py`` shown as one ``server``
layer), without checking it.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Source folder -> the package it is installed as (pyproject's package-dir).
ROOTS: dict[str, str] = {
    "clients/python/vocab": "assay.vocab",
    "clients/python/gen/assay/v1": "assay.v1",
    "clients/python/assay_client": "assay.client",
    "kernels": "assay.kernels",
    "server": "assay.server",
}

#: Layers, lowest first; layers of one rank are peers.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("vocab", "v1"), ("client",), ("kernels",), ("strategies",), ("pools",),
    ("scaleout", "models"), ("acquisition",), ("edge",), ("wiring",),
)

#: Package prefix -> layer; the longest matching prefix wins.
PREFIXES: dict[str, str] = {
    "assay.vocab": "vocab",
    "assay.v1": "v1",
    "assay.client": "client",
    "assay.kernels": "kernels",
    "assay.server.strategies": "strategies",
    "assay.server.scaleout": "scaleout",
    "assay.server.models": "models",
    "assay.server.pools": "pools",
    "assay.server.acquisition": "acquisition",
    "assay.server.edge": "edge",
    "assay.server.wiring": "wiring",
}
#: Modules outside the subpackages that belong to the wiring.
WIRING_MODULES = frozenset({"assay.server", "assay.server.__main__"})

_BELOW_PEERS = ("vocab", "kernels", "strategies", "pools")

#: Layer -> the layers it may import. Strictly downward, with one narrowing: only the
#: edge and the wiring may import the client (it brings grpc with it). The pools keep
#: every pool's metadata and rows on this machine; scale-out stands on them (its
#: backend holds a sharded pool's rows behind the store's ``ShardRows`` protocol) and
#: the models store their files with the pools' durability helper. Imports inside
#: ``if TYPE_CHECKING:`` count like any other.
ALLOWED: dict[str, frozenset[str]] = {
    "vocab": frozenset(),
    "v1": frozenset(),
    "client": frozenset({"vocab", "v1"}),
    "kernels": frozenset({"vocab"}),
    "strategies": frozenset({"vocab", "kernels"}),
    "pools": frozenset({"vocab", "kernels", "strategies"}),
    "scaleout": frozenset(_BELOW_PEERS),
    "models": frozenset(_BELOW_PEERS),
    "acquisition": frozenset({*_BELOW_PEERS, "scaleout", "models"}),
    "edge": frozenset({*_BELOW_PEERS, "scaleout", "v1", "client", "models", "acquisition"}),
    "wiring": frozenset({*_BELOW_PEERS, "scaleout", "v1", "client", "models", "acquisition",
                         "edge"}),
}

#: Layers that may not import grpc or the generated contract: everything of the server
#: below the edge, and what it stands on. (The client is the wire's other end.)
NO_WIRE = frozenset({"vocab", "kernels", "strategies", "scaleout", "models", "pools",
                     "acquisition"})

#: Edges that break the rules: none. Keep it that way; an entry here is a debt to pay
#: before the next release, and the test fails on one that no longer occurs.
KNOWN_VIOLATIONS: frozenset[str] = frozenset()


#: Module name -> (source text, whether it is a package's ``__init__``).
Modules = dict[str, tuple[str, bool]]


def _modules_on_disk() -> Modules:
    """Every module under ``ROOTS``."""
    out = {}
    for folder, package in ROOTS.items():
        base = ROOT / folder
        if not base.is_dir():
            raise FileNotFoundError(f"package root {folder} is gone: update ROOTS")
        for path in sorted(base.rglob("*.py")):
            out[_module_name(package, path.relative_to(base).parts)] = (
                path.read_text(), path.name == "__init__.py")
    return out


def _modules_at(rev: str) -> Modules:
    """Every module under ``ROOTS`` at git revision ``rev`` (the roots that exist there)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], check=True,
                              capture_output=True, text=True).stdout

    out = {}
    for folder, package in ROOTS.items():
        for name in git("ls-tree", "-r", "--name-only", rev, folder).split():
            if name.endswith(".py"):
                parts = Path(name).relative_to(folder).parts
                out[_module_name(package, parts)] = (git("show", f"{rev}:{name}"),
                                                     parts[-1] == "__init__.py")
    return out


def _module_name(package: str, parts: tuple[str, ...]) -> str:
    names = [*parts[:-1], parts[-1].removesuffix(".py")]
    if names[-1] == "__init__":
        names.pop()
    return ".".join([package, *names])


def layer_of(module: str, flat: frozenset[str] = frozenset()) -> str | None:
    """The layer of an ``assay.*`` module; None when it belongs to none.

    Modules in ``flat`` form one ``server`` layer (the layout before the layers had
    folders, when server/*.py sat side by side).
    """
    if module in flat:
        return "server"
    if module in WIRING_MODULES:
        return "wiring"
    best = max((p for p in PREFIXES if module == p or module.startswith(p + ".")),
               key=len, default=None)
    return None if best is None else PREFIXES[best]


def _imports(module: str, source: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """Absolute names of what ``module`` imports, anywhere in its body.

    ``from X import a`` counts as an import of ``X.a`` when that is a module, else of
    ``X``; ``importlib.import_module("assay....")`` with a literal name counts too.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield sub if sub in known else target
        elif (isinstance(node, ast.Call) and _called_name(node.func) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            yield node.args[0].value


def _called_name(func: ast.expr) -> str | None:
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)


def import_graph(modules: Modules) -> set[tuple[str, str]]:
    """Every (importer, imported) pair: imported is an ``assay.*`` module or a grpc package."""
    known = set(modules)
    edges = set()
    for module, (source, is_package) in modules.items():
        for name in _imports(module, source, is_package, known):
            top = name.partition(".")[0]
            if name.startswith("assay.") or name == "assay":
                edges.add((module, name))
            elif top.startswith("grpc"):
                edges.add((module, top))
    return edges


def violations(edges: Iterable[tuple[str, str]]) -> set[str]:
    """The edges that break a rule, as "importer -> imported"."""
    found = set()
    for src, dst in edges:
        here = layer_of(src)
        if dst.startswith("grpc"):
            bad = here is None or here in NO_WIRE
        else:
            there = layer_of(dst)
            bad = (here is None or there is None
                   or (here != there and there not in ALLOWED[here])
                   or (there == "v1" and here in NO_WIRE))
        if bad:
            found.add(f"{src} -> {dst}")
    return found


def test_every_module_is_in_a_layer():
    modules = _modules_on_disk()
    assert len(modules) > 90, f"only {len(modules)} modules found: is the scan still working?"
    assert not sorted(m for m in modules if layer_of(m) is None)


def test_the_rules_see_what_they_should():
    """The checker itself: a few edges it must refuse and a few it must accept."""
    assert violations([
        ("assay.vocab.errors", "assay.kernels.config"),
        ("assay.client", "assay.server.edge.tensors"),
        ("assay.kernels.batchbald", "assay.server.strategies.topk"),
        ("assay.server.pools.store", "assay.server.acquisition.selection"),
        ("assay.server.scaleout.backend", "assay.server.edge.sharded"),
        ("assay.server.acquisition.service", "grpc"),
        ("assay.server.models.inference", "assay.v1"),
        ("assay.server.strategies.registry", "assay.client"),
        ("assay.server.pools.store", "assay.server.models.store"),
        ("assay.server.nowhere", "assay.vocab.errors"),
    ]) == {
        "assay.vocab.errors -> assay.kernels.config",
        "assay.client -> assay.server.edge.tensors",
        "assay.kernels.batchbald -> assay.server.strategies.topk",
        "assay.server.pools.store -> assay.server.acquisition.selection",
        "assay.server.scaleout.backend -> assay.server.edge.sharded",
        "assay.server.acquisition.service -> grpc",
        "assay.server.models.inference -> assay.v1",
        "assay.server.strategies.registry -> assay.client",
        "assay.server.pools.store -> assay.server.models.store",
        "assay.server.nowhere -> assay.vocab.errors",
    }
    assert not violations([
        ("assay.server.models.inference", "assay.server.strategies.registry"),
        ("assay.server.edge.servicer", "grpc"),
        ("assay.server.edge.servicer", "assay.v1"),
        ("assay.server.wiring.app", "assay.server.edge.servicer"),
        ("assay.server.__main__", "assay.server.wiring.cli"),
        ("assay.client", "assay.v1"),
        ("assay.client", "grpc"),
        ("assay.kernels.kcenter", "assay.vocab.errors"),
        ("assay.server.models.store", "assay.server.pools.store"),
    ])


def test_no_new_cross_layer_import():
    found = violations(import_graph(_modules_on_disk()))
    new = sorted(found - KNOWN_VIOLATIONS)
    gone = sorted(KNOWN_VIOLATIONS - found)
    assert not new, ("imports against the layering (a lower layer importing a higher one, "
                     f"or grpc / assay.v1 below the edge): {new}")
    assert not gone, f"fixed: remove these from KNOWN_VIOLATIONS in tests/test_layers.py: {gone}"


def test_private_modules_stay_inside_their_package():
    """``_name`` modules are a package's own (``assay.kernels._kcenter_cuda``, say): other
    packages go through the public module that wraps them."""
    leaks = sorted(f"{a} -> {b}" for a, b in import_graph(_modules_on_disk())
                   if any(part.startswith("_") and not part.startswith("__")
                          for part in b.split("."))
                   and not a.startswith(b.rsplit(".", 1)[0] + ".")
                   and a != b.rsplit(".", 1)[0])
    assert not leaks, f"imports of another package's private module: {leaks}"


def report(modules: Modules, flat_server: bool = False) -> str:
    """The import graph as text: per layer what it imports, then the crossing edges."""
    edges = import_graph(modules)
    bad = set() if flat_server else violations(edges)
    flat = frozenset(m for m, (_, is_package) in modules.items() if flat_server and (
        m == "assay.server" or (m.startswith("assay.server.") and m.count(".") == 2
                                and not is_package)))

    def layer(module: str) -> str:
        if module.startswith("grpc"):
            return "grpc"
        return layer_of(module, flat) or "?"

    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    sizes: dict[str, int] = defaultdict(int)
    for module in modules:
        sizes[layer(module)] += 1
    crossing = sorted((layer(s), s, d) for s, d in edges if layer(s) != layer(d))
    for here, _, dst in crossing:
        counts[here][layer(dst)] += 1
    order = [name for rank in LAYERS for name in rank]
    if flat_server:
        order.insert(order.index("wiring"), "server")
    order += sorted(set(sizes) - set(order))
    lines = ["layer (modules): imports layer x edges"]
    for here in order:
        if here in sizes:
            uses = ", ".join(f"{dst} x{n}" for dst, n in sorted(
                counts[here].items(), key=lambda kv: order.index(kv[0])
                if kv[0] in order else len(order)))
            lines.append(f"  {here} ({sizes[here]}): {uses or '-'}")
    lines.append("edges across layers (! breaks a rule):")
    for here, src, dst in crossing:
        mark = "!" if f"{src} -> {dst}" in bad else " "
        lines.append(f" {mark} [{here} -> {layer(dst)}] {src} -> {dst}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", help="print the graph of this git revision instead "
                        "(flat server/*.py shown as one 'server' layer; not checked)")
    args = parser.parse_args(argv)
    if args.rev:
        print(report(_modules_at(args.rev), flat_server=True))
        return 0
    modules = _modules_on_disk()
    print(report(modules))
    found = violations(import_graph(modules))
    print(f"{len(found)} violations, {len(found - KNOWN_VIOLATIONS)} not in KNOWN_VIOLATIONS, "
          f"{len(KNOWN_VIOLATIONS - found)} known ones fixed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
