"""Package boundaries: model/ is pure PyTorch; the client never imports torch or the server."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RULES = {
    "model": {
        "fastapi",
        "starlette",
        "redis",
        "pydantic",
        "pydantic_settings",
        "uvicorn",
        "httpx",
        "server",
        "clients",
        "vssm_client",
    },
    "clients/python": {"torch", "model", "server", "safetensors", "numpy", "fastapi", "redis"},
}


def root(name: str) -> str:
    """The package an import names: `vssm.server.app` is `server` (model/ and server/ install under vssm)."""
    parts = name.split(".")
    return parts[1] if parts[0] == "vssm" and len(parts) > 1 else parts[0]


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {root(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "vssm":  # from vssm import server
                roots |= {alias.name for alias in node.names}
            else:
                roots.add(root(node.module))
    return roots


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_does_not_import_forbidden_modules(package):
    files = sorted((ROOT / package).rglob("*.py"))
    if package == "model":
        assert files, "model/ has no python files"
    bad = {str(f.relative_to(ROOT)): sorted(imported_roots(f) & RULES[package]) for f in files}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"forbidden imports: {bad}"


def test_rule_detects_a_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import torch\nfrom fastapi import FastAPI\nfrom . import sibling\nfrom vssm.server import app\n")
    assert imported_roots(f) == {"torch", "fastapi", "server"}
    f.write_text("from vssm import model\nimport vssm.server.app\n")
    assert imported_roots(f) == {"model", "server"}
