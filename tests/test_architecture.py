"""Imports point one way, and each heavy library stays in its own module."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cross_pictures"


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules() -> dict[str, set[str]]:
    return {
        str(path.relative_to(PACKAGE)): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_nothing_below_the_api_imports_the_api_or_the_app() -> None:
    for name, imported in modules().items():
        if name.startswith("api/") or name in ("app.py", "main.py", "cli.py"):
            continue
        bad = {m for m in imported if m.startswith(("cross_pictures.api", "cross_pictures.app"))}
        assert not bad, f"{name} imports {bad}"


def test_libraries_stay_in_their_layer() -> None:
    allowed: dict[str, Callable[[str], bool]] = {
        "fastapi": lambda n: n.startswith("api/") or n in ("app.py", "main.py"),
        "starlette": lambda n: n.startswith("api/"),
        # The quantize tool makes calibration views (mirror, crops): an offline model tool,
        # never on the request path, which decodes only through preprocessing.py.
        "PIL": lambda n: n in ("preprocessing.py", "quantization.py"),
        "onnxruntime": lambda n: n in ("inference.py", "quantization.py", "model_build.py"),
    }
    for name, imported in modules().items():
        for library, ok in allowed.items():
            uses = any(m == library or m.startswith(library + ".") for m in imported)
            assert not uses or ok(name), f"{name} imports {library}"
