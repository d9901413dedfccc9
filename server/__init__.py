"""VSSM serve's HTTP service: FastAPI over the models of ``model/`` with sessions in a store."""

import os

# A server shares its cores with its event loop, Redis and often other processes.  OpenMP's default
# is to spin while waiting, so intra-op threads burn the cores their peers need: a 2-thread server
# on a busy 2-core machine served 16 clients at 369 tokens/s spinning and 6,864 waiting passively
# (docs/experiments/rounds-and-serving.md).  The runtime reads this once, when torch loads it, so
# it is set here, before anything below imports torch (the `vssm` command imports this package
# first).  An explicit OMP_WAIT_POLICY wins; one-thread runs (the training recipes) never wait.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .app import create_app
from .config import Settings

__all__ = ["Settings", "create_app"]
