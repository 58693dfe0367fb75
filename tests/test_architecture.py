"""The import graph of bot/, cogs/ and engine/ keeps the layers of the documentation's
Architecture page (docs/development/architecture.md): no import circle, no arrow that runs
back up.

Every import counts, including those inside functions (lazy) and under ``TYPE_CHECKING``:
a circle kept alive by a lazy import is still a circle for a reader. An import of a package's
submodule is an arrow to that submodule only (not to the package's ``__init__``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "cogs", "engine")
# Outside libraries whose import is an arrow worth checking.
OUTSIDE = ("discord", "fastapi", "starlette")
# The composition roots and the entry points that may import them.
BOT_ROOT = "bot.app"
BOT_ENTRY = frozenset({"bot.__main__", "bot.sandbox"})
ENGINE_ROOT = "engine.services"


@dataclass(frozen=True)
class Arrow:
    """``source`` imports ``target`` at ``line``."""

    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line})"


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module (or outside library) that ``name`` lives in, if it is one."""
    top = name.split(".")[0]
    if top in OUTSIDE:
        return top
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield base, node.lineno
            for alias in node.names:
                # ``from bot.jobs import runner`` names a module; ``from x import Name`` does
                # not, and then resolves to ``x`` itself.
                yield f"{base}.{alias.name}", node.lineno


def _arrows() -> list[Arrow]:
    arrows: dict[tuple[str, str], Arrow] = {}
    for module, path in MODULES.items():
        for name, line in _imported(module, path):
            target = _resolve(name)
            if target is None or target == module:
                continue
            arrows.setdefault((module, target), Arrow(module, target, line))
    return sorted(arrows.values(), key=lambda a: (a.source, a.target))


ARROWS = _arrows()


def _layer(module: str) -> str:
    return module.split(".")[0]


def _circles(arrows: list[Arrow]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, list[str]] = {m: [] for m in MODULES}
    for arrow in arrows:
        if arrow.target in MODULES:
            graph[arrow.source].append(arrow.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def _engine_domain(module: str) -> bool:
    """Engine modules below the HTTP layer and the composition root."""
    return _layer(module) == "engine" and not (
        module in {"engine.app", "engine.cli", "engine.__main__", ENGINE_ROOT}
        or module.startswith("engine.api")
    )


def engine_to_bot(a: Arrow) -> bool:
    """The engine never imports the bot, the cogs or discord."""
    return _layer(a.source) == "engine" and _layer(a.target) in {"bot", "cogs", "discord"}


def bot_to_cogs(a: Arrow) -> bool:
    """Cogs are loaded by name (``bot.app.EXTENSIONS``); bot/ never depends on them."""
    return _layer(a.source) == "bot" and _layer(a.target) == "cogs"


def up_to_bot_root(a: Arrow) -> bool:
    """Inside bot/, only the entry points import the composition root (cogs may)."""
    return a.target == BOT_ROOT and _layer(a.source) == "bot" and a.source not in BOT_ENTRY


def engine_domain_up(a: Arrow) -> bool:
    """HTTP lives in engine/api/; the domain that engine/services.py builds never imports
    it back, nor the API, the app or the CLI."""
    return _engine_domain(a.source) and (
        a.target in {"fastapi", "starlette", ENGINE_ROOT, "engine.app", "engine.cli"}
        or a.target.startswith("engine.api")
    )


RULES = (engine_to_bot, bot_to_cogs, up_to_bot_root, engine_domain_up)


def test_the_graph_is_read() -> None:
    # A reader that found nothing would pass every rule below.
    assert len(MODULES) > 100
    pairs = {(a.source, a.target) for a in ARROWS}
    assert ("bot.app", "bot.jobs") in pairs
    assert ("engine.app", "engine.services") in pairs
    # Lazy imports are read too: engine.services imports engine.devices inside warm_up only.
    assert ("engine.services", "engine.devices") in pairs


def test_circles_are_found() -> None:
    arrows = [Arrow("bot.app", "bot.jobs", 1), Arrow("bot.jobs", "bot.app", 2)]
    assert _circles(arrows) == [["bot.app", "bot.jobs"]]
    assert _circles(arrows[:1]) == []


def test_no_import_circle() -> None:
    circles = _circles(ARROWS)
    detail = [
        [str(a) for a in ARROWS if a.source in circle and a.target in circle] for circle in circles
    ]
    assert circles == [], detail


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_no_arrow_runs_back_up(rule: object) -> None:
    assert callable(rule)
    assert [str(a) for a in ARROWS if rule(a)] == [], rule.__doc__


@pytest.mark.parametrize(
    ("source", "target", "broken_by"),
    [
        ("cogs.voice", "bot.app", None),
        ("bot.__main__", "bot.app", None),
        ("bot.jobs.runner", "bot.app", up_to_bot_root),
        ("bot.sandbox", "cogs.sandbox", bot_to_cogs),
        ("engine.voice.handlers", "discord", engine_to_bot),
        ("engine.image.service", "engine.api.errors", engine_domain_up),
        ("engine.image.service", "engine.services", engine_domain_up),
        ("engine.image.service", "fastapi", engine_domain_up),
        ("engine.api.loras", "engine.image.service", None),
        ("engine.api.deps", "engine.services", None),
    ],
)
def test_the_rules_tell_arrows_apart(source: str, target: str, broken_by: object) -> None:
    arrow = Arrow(source, target, 0)
    assert [rule for rule in RULES if rule(arrow)] == ([] if broken_by is None else [broken_by])


ARCHITECTURE_PAGE = ROOT / "docs" / "development" / "architecture.md"


def _picture() -> str:
    """The import graph drawn on the documentation's Architecture page."""
    text = ARCHITECTURE_PAGE.read_text(encoding="utf-8")
    section = text.split("## The import graph", 1)[1]
    return section.split("```", 2)[1]


def test_every_path_the_picture_names_exists() -> None:
    named = set(re.findall(r"\b(?:bot|cogs|engine)/[\w./]*", _picture()))
    assert len(named) > 20  # the picture was found and read
    missing = sorted(p for p in named if not (ROOT / p.rstrip(".")).exists())
    assert missing == [], f"the import graph in {ARCHITECTURE_PAGE.name} names files that moved"
