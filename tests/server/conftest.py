"""Fixtures for server tests: real Redis on free loopback ports, tiny checkpoints, real uvicorn."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from vssm import model

ROOT = Path(__file__).resolve().parents[2]

# tiny models of every family; "text-vssm" speaks text (dataset recorded as shakespeare)
CHECKPOINTS = {
    "mnist-vssm": (
        "vssm",
        "mnist",
        {
            "vocab_size": 2,
            "max_position": 64,
            "width": 16,
            "state_size": 8,
            "enc_layers": 1,
            "dec_layers": 2,
            "par_layers": 1,
            "n_latents": 2,
            "n_classes": 8,
        },
    ),
    "text-vssm": (
        "vssm",
        "shakespeare",
        {
            "vocab_size": 256,
            "width": 16,
            "state_size": 8,
            "enc_layers": 1,
            "dec_layers": 1,
            "par_layers": 1,
            "n_latents": 2,
            "n_classes": 8,
        },
    ),
    "mnist-ar-ssm": (
        "ar-ssm",
        "mnist",
        {"vocab_size": 2, "max_position": 64, "width": 16, "state_size": 8, "layers": 2},
    ),
    "mnist-ar-transformer": (
        "ar-transformer",
        "mnist",
        {"vocab_size": 2, "max_position": 64, "width": 16, "heads": 2, "layers": 1},
    ),
    "mnist-ar-gru": ("ar-gru", "mnist", {"vocab_size": 2, "max_position": 64, "width": 16, "layers": 1}),
}


def free_port(bus: bool = False) -> int:
    """A free loopback port; ``bus``: one whose Redis Cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not bus:
            return port
        if port + 10000 <= 65535:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port pair for a Redis Cluster node")


def wait_until(check, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except RuntimeError:
            raise
        except Exception:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def redis_binary(name: str = "redis-server") -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: `make test` installs it (apt-get install redis-server)")
    return path


class RedisServer:
    """A redis-server on a free loopback port, persisted (AOF) so a restart keeps committed data."""

    def __init__(self, workdir: Path, cluster: bool = False) -> None:
        self.port = free_port(bus=cluster)
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True)
        self.cluster = cluster
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--protected-mode",
            "no",
        ]
        if self.cluster:
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]
        log = self.dir / "redis.log"
        self.proc = subprocess.Popen(
            [*args, "--logfile", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:  # it exited: say why now rather than time out
                raise RuntimeError(f"redis-server exited: {log.read_text()[-2000:] if log.exists() else ''}")
            return self.ping()

        wait_until(up, 10, f"redis on {self.port}")
        return self

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [redis_binary("redis-cli"), "-p", str(self.port), *args], capture_output=True, text=True, timeout=30
        )
        return out.stdout


@pytest.fixture
def redis(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("checkpoints")
    for i, (name, (family, dataset, cfg)) in enumerate(CHECKPOINTS.items()):
        torch.manual_seed(i)
        model.save_checkpoint(model.build_model(family, cfg), d / f"{name}.safetensors", extra={"dataset": dataset})
    return d


def reference(checkpoints: Path, name: str, prompt: list[int], seed: int, chunks: list[int]) -> list[list[int]]:
    """What the model API itself generates: the ground truth every server path must match."""
    m = model.load_checkpoint(checkpoints / f"{name}.safetensors")
    state = m.start(torch.tensor([prompt], dtype=torch.long), seed)
    out = []
    for n in chunks:
        tokens, state = m.generate(state, n)
        out.append(tokens[0].tolist())
    return out


class ServerProcess:
    """``vssm serve`` as a user runs it, on a free port."""

    def __init__(self, checkpoints: Path, redis_url: str | None, **env: str) -> None:
        self.port = free_port()
        self.checkpoints, self.redis_url, self.env = checkpoints, redis_url, env
        self.proc: subprocess.Popen | None = None
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"vssm-serve-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        args = [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--port",
            str(self.port),
            "--checkpoints",
            str(self.checkpoints),
        ]
        if self.redis_url:
            args += ["--redis-url", self.redis_url]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "VSSM_TORCH_THREADS": "1", **self.env}
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        wait_until(
            lambda: httpx.get(self.url + "/ready", timeout=1).status_code == 200,
            60,
            f"server on {self.port} (log: {self.log})",
        )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()


@pytest.fixture
def serve(checkpoints) -> Iterator:
    started: list[ServerProcess] = []

    def start(redis_url: str | None, **env: str) -> ServerProcess:
        s = ServerProcess(checkpoints, redis_url, **env).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
