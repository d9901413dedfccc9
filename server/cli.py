"""The ``vssm`` command: ``serve`` here, ``train | eval | sample`` from the model package."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from vssm.model.cli import build_parser

from .config import Settings

HTTP_PROTOCOL = "vssm.server.protocol:HTTPProtocol"  # uvicorn's, with the error envelope on its own 400s


def main(argv: Sequence[str] | None = None) -> int:
    parser, sub = build_parser("vssm")
    p = sub.add_parser("serve", help="serve every checkpoint of a directory over HTTP")
    p.add_argument("--host", help="interface to bind (VSSM_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (VSSM_PORT, default 8000)")
    p.add_argument("--checkpoints", help="checkpoint directory (VSSM_CHECKPOINTS, default: bundled checkpoints/)")
    p.add_argument(
        "--redis-url", help="redis://, rediss:// or redis+cluster:// URL (VSSM_REDIS_URL); none: in-process store"
    )
    p.add_argument("--device", help="auto | cpu | cuda (VSSM_DEVICE)")
    p.add_argument(
        "--api-keys",
        help="comma-separated Bearer keys (VSSM_API_KEYS); a command line is visible to every local user, "
        "so prefer the variable or --api-keys-file",
    )
    p.add_argument("--api-keys-file", help="file of Bearer keys, one per line (VSSM_API_KEYS_FILE)")
    p.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes; more than one needs Redis (they share it)"
    )
    p.set_defaults(func=_serve)
    args = parser.parse_args(argv)
    if args.func is _serve:  # the settings the server will run with, checked before any model loads
        args.settings = _settings(args)
        problem = _workers_problem(args.workers, args.settings.redis_url)
        if problem:
            p.error(problem)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args.func(args)
    return 0


def _workers_problem(workers: int, redis_url: str | None) -> str | None:
    """Why ``--workers`` cannot run with this store, or None: each worker process has its own memory, so
    sessions kept in it would be found only by the worker that made them (a 404 on every other)."""
    if workers < 1:
        return f"--workers must be at least 1, got {workers}"
    if workers > 1 and not redis_url:
        return (
            f"--workers {workers} needs a session store they share: set --redis-url or VSSM_REDIS_URL "
            "(sessions in one worker's memory are not seen by the others)"
        )
    return None


def _settings(args: argparse.Namespace) -> Settings:
    """The ``VSSM_...`` variables with the command line's flags over them."""
    overrides = {
        k: getattr(args, k)
        for k in ("host", "port", "checkpoints", "redis_url", "device", "api_keys", "api_keys_file")
        if getattr(args, k) is not None
    }
    return Settings(**overrides)


def _serve(args: argparse.Namespace) -> None:
    import os

    import uvicorn

    settings = args.settings
    if args.workers > 1:  # worker processes rebuild the app from the environment (never a command line)
        os.environ.update(settings.to_environment())
        uvicorn.run(
            "vssm.server.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=args.workers,
            log_level=settings.log_level,
            http=HTTP_PROTOCOL,
        )
        return
    from .app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=HTTP_PROTOCOL,
    )


if __name__ == "__main__":
    sys.exit(main())
