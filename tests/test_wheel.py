"""The built wheel installs under one namespace (`vssm.model`, `vssm.server`) and its console script works.

Builds the wheel from this checkout, installs it with no dependencies into a fresh venv that borrows
the dependencies of the running interpreter (a path entry, so the editable install's finder is not
run), and calls `vssm` from outside the repository.
"""

from __future__ import annotations

import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        cwd=out,
        capture_output=True,
    )
    (whl,) = out.glob("vssm_serve-*.whl")
    return whl


def test_nothing_named_model_or_server_at_the_top(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"vssm"}, tops
    assert "vssm/model/vssm.py" in names and "vssm/server/app.py" in names
    for static in ("index.html", "playground.js", "playground.css", "digits.json"):  # the playground at /
        assert f"vssm/server/static/{static}" in names
    for source in ("s4d_block.c", "keyed.c"):  # the kernels' sources, compiled on first use
        assert f"vssm/model/csrc/{source}" in names
    assert "vssm/__init__.py" not in names  # a namespace: other distributions may add to vssm


def test_console_script_from_the_installed_wheel(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    fresh_site = Path(
        subprocess.run(
            [py, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True
        ).stdout.strip()
    )
    # torch, fastapi, ... from this interpreter, appended after the fresh site-packages (no .pth of theirs runs)
    (fresh_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    where = subprocess.run(
        [py, "-c", "import vssm.model, vssm.server.app; print(vssm.model.__file__); import model"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(str(fresh_site)), where.stdout + where.stderr
    assert "No module named 'model'" in where.stderr
    for args in (["--help"], ["train", "--help"], ["serve", "--help"]):
        r = subprocess.run([env_dir / "bin" / "vssm", *args], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "usage: vssm" in r.stdout
