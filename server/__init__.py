"""VSSM serve's HTTP service: FastAPI over the models of ``model/`` with sessions in a store."""

from .app import create_app
from .config import Settings

__all__ = ["Settings", "create_app"]
