"""What code a rule runs: the tinyllm modules its script imports, followed through the library's imports.

A rule's params carry `code_hash(script)`, so editing any module the rule runs reruns it (Snakemake's own
code trigger sees only the script), and editing one it never imports (cli.py, bench.py) reruns nothing.
Imports inside functions count too: they run when the rule does.
"""

from __future__ import annotations

import ast
import hashlib
import os
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent  # workflow/lib/tinyllm


def imported_modules(source: Path, package: str = LIBRARY.name) -> set[str]:
    """Top-level names of the package's modules that a file imports ("train" for tinyllm.train), and of
    sibling modules it imports by their bare name (a rule script's `_rule`)."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), filename=str(source))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from tinyllm import paths` names modules; `from tinyllm.paths import X` names one.
            from_package = node.module == package
            names = [f"{package}.{a.name}" for a in node.names] if from_package else [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == package and len(parts) > 1:
                found.add(parts[1])
            elif len(parts) == 1 and (source.parent / f"{name}.py").is_file():
                found.add(f"./{name}")  # a sibling file beside the source
    return found


def module_closure(script: str | os.PathLike) -> list[Path]:
    """The script and every file it runs of ours: tinyllm modules and sibling helpers, transitively."""
    script = Path(script).resolve()
    seen, todo = {script}, [script]
    while todo:
        source = todo.pop()
        for name in imported_modules(source):
            path = source.parent / f"{name[2:]}.py" if name.startswith("./") else LIBRARY / f"{name}.py"
            if path.is_file() and path not in seen:
                seen.add(path)
                todo.append(path)
    return sorted(seen)


def code_hash(script: str | os.PathLike) -> str:
    """sha256 over the files module_closure(script) names (by name and content), 16 hex digits."""
    digest = hashlib.sha256()
    for path in module_closure(script):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
