"""The layout's rule: server/ and client/ are peers over common/. Neither imports the other
(at module level or inside a function), and common/ imports neither."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"server": {"client"}, "client": {"server"}, "common": {"client", "server"}}


def imported_packages(source: str) -> set[str]:
    """The top-level package of every import in ``source`` (absolute imports only)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_none_of_its_forbidden_peers(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {sorted(imported_packages(path.read_text()) & banned)}"
        for path in sorted((ROOT / package).rglob("*.py"))
        if (banned := FORBIDDEN[package]) & imported_packages(path.read_text())
    ]
    assert not offenders, "\n".join(offenders)


def test_the_rule_sees_imports_inside_functions_and_from_forms() -> None:
    source = "def f():\n    from client.site import x\nimport server.run as r\nfrom . import y\n"
    assert imported_packages(source) == {"client", "server"}
