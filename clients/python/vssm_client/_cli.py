"""``vssm-client``: the API from a shell.  JSON out (one object per line when streaming), or the
generated text with ``--output text`` (the default when the prompt is given as ``--prompt`` text).

    vssm-client models
    vssm-client complete --model mnist-vssm --tokens 0,1,0 --max-tokens 64 --seed 1
    vssm-client complete --model shakespeare-vssm --prompt "ROMEO:" --max-tokens 200 --stream
    vssm-client session create --model mnist-vssm --tokens 0,0,1 --seed 7 --block-size 28
    vssm-client session generate sess_... --max-tokens 64 [--block-size 1]
    vssm-client session append sess_... --tokens 1,1
    vssm-client session get|fork|delete sess_...
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import httpx
from pydantic import BaseModel

from ._base import DEFAULT_MAX_RETRIES
from ._client import Client
from ._exceptions import APIError
from ._models import Chunk, Completion
from ._version import __version__


def _tokens(value: str) -> list[int]:
    try:
        return [int(t) for t in value.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def _add_prompt(p: argparse.ArgumentParser, required: bool = False) -> None:
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--prompt", help="prompt text (text models)")
    group.add_argument("--tokens", type=_tokens, help="prompt token ids, comma-separated: 0,1,0")


def _add_block_size(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--block-size", type=int, help=f"positions per block of block sampling (default: {default})")
    p.add_argument(
        "--observation-temperature",
        type=float,
        help=f"latent models: tokens given the latents at the temperature times this, 0..1 (default: {default})",
    )


def _add_output(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--output", choices=["json", "text"], help=f"print JSON or only the generated text ({default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vssm-client", description="Client for the VSSM serve HTTP API.")
    parser.add_argument("--base-url", help="server root (default: $VSSM_BASE_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (default: $VSSM_API_KEY)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default 600)")
    parser.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="list the loaded models, or show one")
    models.add_argument("model", nargs="?")

    complete = commands.add_parser("complete", help="one-shot completion")
    complete.add_argument("--model", required=True)
    _add_prompt(complete)
    complete.add_argument("--max-tokens", type=int)
    complete.add_argument("--temperature", type=float)
    complete.add_argument("--n", type=int)
    complete.add_argument("--seed", type=int)
    _add_block_size(complete, "the model's")
    complete.add_argument("--stream", action="store_true")
    complete.add_argument("--chunk-size", type=int)
    _add_output(complete, "default: text with --prompt, else json")

    session = commands.add_parser("session", help="resumable sessions")
    actions = session.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a session (optionally generating the first chunk)")
    create.add_argument("--model", required=True)
    _add_prompt(create)
    create.add_argument("--seed", type=int)
    create.add_argument("--ttl", type=int, dest="ttl_seconds")
    create.add_argument("--max-tokens", type=int)
    create.add_argument("--temperature", type=float)
    _add_block_size(create, "the model's; the session keeps it")
    generate = actions.add_parser("generate", help="generate the next chunk")
    generate.add_argument("id")
    generate.add_argument("--max-tokens", type=int, required=True)
    generate.add_argument("--temperature", type=float)
    _add_block_size(generate, "the session's")
    generate.add_argument(
        "--expected-position", type=int, help="default: the session's current position (looked up), so retries are safe"
    )
    generate.add_argument("--stream", action="store_true")
    generate.add_argument("--chunk-size", type=int)
    _add_output(generate, "default: json")
    append = actions.add_parser("append", help="append observed tokens or text")
    append.add_argument("id")
    _add_prompt(append, required=True)
    append.add_argument("--expected-position", type=int)
    for name, text in [("get", "show a session"), ("delete", "delete a session")]:
        actions.add_parser(name, help=text).add_argument("id")
    fork = actions.add_parser("fork", help="copy a session")
    fork.add_argument("id")
    fork.add_argument("--ttl", type=int, dest="ttl_seconds")
    return parser


def _write_json(obj: BaseModel | Any) -> None:
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def _write_items(items: Iterable[Completion | Chunk], text: bool) -> None:
    for item in items:
        if text:
            sys.stdout.write(item.text)
            sys.stdout.flush()
        else:
            _write_json(item)
    if text:
        sys.stdout.write("\n")


def _prompt(args: argparse.Namespace) -> str | list[int] | None:
    return args.prompt if args.prompt is not None else args.tokens


def _run(client: Client, args: argparse.Namespace) -> None:
    if args.command == "models":
        if args.model:
            _write_json(client.models.get(args.model))
        else:
            _write_json({"object": "list", "data": [m.model_dump(mode="json") for m in client.models.list()]})
    elif args.command == "complete":
        text = (args.output or ("text" if args.prompt is not None else "json")) == "text"
        fields = {
            k: getattr(args, k)
            for k in ("model", "max_tokens", "temperature", "n", "seed", "block_size", "observation_temperature")
        }
        if args.stream:
            with client.completions.stream(prompt=_prompt(args), chunk_size=args.chunk_size, **fields) as stream:
                _write_items(stream, text)
        else:
            _write_items([client.completions.create(prompt=_prompt(args), **fields)], text)
    else:
        _run_session(client, args)


def _run_session(client: Client, args: argparse.Namespace) -> None:
    sessions = client.sessions
    if args.action == "create":
        keys = ("model", "seed", "ttl_seconds", "max_tokens", "temperature", "block_size", "observation_temperature")
        fields = {k: getattr(args, k) for k in keys}
        _write_json(sessions.create(prompt=_prompt(args), **fields).info)
    elif args.action == "generate":
        expected = args.expected_position if args.expected_position is not None else sessions.get(args.id).position
        text = args.output == "text"
        if args.stream:
            stream = sessions.stream(
                args.id,
                max_tokens=args.max_tokens,
                chunk_size=args.chunk_size,
                temperature=args.temperature,
                block_size=args.block_size,
                observation_temperature=args.observation_temperature,
                expected_position=expected,
            )
            with stream:
                _write_items(stream, text)
        else:
            chunk = sessions.generate(
                args.id,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                block_size=args.block_size,
                observation_temperature=args.observation_temperature,
                expected_position=expected,
            )
            _write_items([chunk], text)
    elif args.action == "append":
        _write_json(sessions.append(args.id, _prompt(args) or [], expected_position=args.expected_position).info)
    elif args.action == "get":
        _write_json(sessions.get(args.id).info)
    elif args.action == "fork":
        _write_json(sessions.fork(args.id, ttl_seconds=args.ttl_seconds).info)
    elif args.action == "delete":
        _write_json(sessions.delete(args.id))


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Run the command line; returns the exit status (1 on an API error, 2 on a usage error)."""
    args = build_parser().parse_args(argv)
    try:
        with Client(
            base_url=args.base_url,
            api_key=args.api_key,
            timeout=args.timeout,
            max_retries=args.max_retries,
            transport=transport,
        ) as client:
            _run(client, args)
    except APIError as e:
        sys.stderr.write(f"vssm-client: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
