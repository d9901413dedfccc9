"""``vssm train | eval | sample | judge-train`` (also ``python -m vssm.model ...``); ``vssm serve`` lives in server/."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import re
import sys
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .train import TrainConfig

__all__ = ["add_model_commands", "main", "train_config"]


def _field_comments(cls: type) -> dict[str, str]:
    """``name: type = default  # comment`` -> {name: comment}: each config field's one-line comment."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source shipped: flags without help text
        return {}
    return dict(re.findall(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, flags=re.M))


def _add_dataclass_args(p: argparse.ArgumentParser, cls: type, only_given: bool = False) -> None:
    """One ``--flag`` per dataclass field, typed, with the field's comment as its help.

    ``only_given``: flags not on the command line are left out of the parsed namespace (so that a
    preset can tell them from flags given at their default value)."""
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        text = comments.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        default = argparse.SUPPRESS if only_given else f.default
        p.add_argument(flag, type=base, default=default, help=f"{text} (default: {f.default})".strip())


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    from .train import TrainConfig

    p = sub.add_parser(
        "train",
        help="train (or resume) a model; rerunning the same command resumes",
        description="Train a model. `vssm train --preset NAME` reproduces checkpoints/NAME.safetensors "
        "(recipes in model/recipes.py); flags given with it override the recipe.",
    )
    _add_dataclass_args(p, TrainConfig, only_given=True)
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="test-set NLL, prompted NLL and generation time, as JSON")
    p.add_argument("checkpoint")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="JSON path (default: print)")
    p.add_argument(
        "--samples",
        type=_positive_int,
        default=16,
        help="VSSM importance samples for the tighter bound (the JSON's iw_curve gives k = 1, 2, 4, ... of them)",
    )
    p.add_argument(
        "--prompted-samples",
        type=_positive_int,
        default=None,
        help="VSSM importance samples of the prompted bounds (default: --samples)",
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N test sequences")
    p.add_argument(
        "--offset",
        type=int,
        default=0,
        help="skip the first N test sequences (with --limit: one shard of a long evaluation, run in parallel)",
    )
    p.add_argument(
        "--prompted-limit",
        type=int,
        default=1000,
        help="prompted NLLs on the first N test sequences (0: all); the VSSM's bound costs k passes",
    )
    p.add_argument(
        "--block-sizes",
        default="",
        help="also measure block sampling at these block sizes, e.g. 1,2,4,8,16,28,56,112,196,392,784: "
        "bound, generation time at batch 1 and 32, sample figures (the JSON's block_curve)",
    )
    p.add_argument("--block-limit", type=int, default=500, help="test sequences of each block-size bound")
    p.add_argument("--block-samples", type=_positive_int, default=8, help="importance samples of each block-size bound")
    p.add_argument("--judge-samples", type=_positive_int, default=1000, help="unprompted samples judged per block size")
    p.add_argument("--judge", default=None, help="digit classifier judging image samples (vssm judge-train)")
    p.add_argument(
        "--observation-temperature",
        type=float,
        default=None,
        help="latent families: measure at this observation temperature instead of the checkpoint's",
    )
    p.add_argument(
        "--judge-only",
        action="store_true",
        help="judge new samples for the curve's rows in the JSON at --out (after a change of sampling "
        "setting such as --observation-temperature); bounds and times are kept",
    )
    p.add_argument(
        "--times-only",
        action="store_true",
        help="re-time generation (the whole-sequence time and every curve row's) in the JSON at --out, "
        "after a change of code or machine; bounds and samples are kept",
    )
    p.add_argument(
        "--curve-only",
        action="store_true",
        help="measure only the block curve and add it to the JSON at --out (an earlier eval of the same weights)",
    )
    p.add_argument("--ar-judge", default=None, help="autoregressive checkpoint scoring the samples (its NLL of them)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seq-len", type=int, default=256, help="text window length")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_eval)

    p = sub.add_parser(
        "set-block-size", help="record the block size a checkpoint is served at by default (weights unchanged)"
    )
    p.add_argument("checkpoint")
    p.add_argument("block_size", type=int, help="block size; 0 for one parallel pass")
    p.set_defaults(func=_set_block_size)

    p = sub.add_parser(
        "set-observation-temperature",
        help="record the temperature of tokens given latents, as a fraction of the request's (weights unchanged)",
    )
    p.add_argument("checkpoint")
    p.add_argument("ratio", type=float, help="0: the most likely token given the latents; 1: the model's own sampling")
    p.set_defaults(func=_set_observation_temperature)

    p = sub.add_parser("sample", help="PNG grids (images) or text samples from a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="output PNG (images) or .txt (text) path prefix")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n", type=int, default=16, help="samples per grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--prompt-rows", type=int, default=14, help="image rows given as the prompt")
    p.add_argument("--prompt", default="ROMEO:\n", help="text prompt")
    p.add_argument("--length", type=int, default=400, help="text bytes to generate")
    p.add_argument(
        "--block-size", type=_positive_int, default=None, help="block sampling's block size (default: the model's)"
    )
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_sample)

    from .judge import JudgeTrainConfig

    p = sub.add_parser(
        "judge-train", help="train the MNIST digit classifier that judges samples; write it and reference figures"
    )
    _add_dataclass_args(p, JudgeTrainConfig)
    p.set_defaults(func=_judge_train)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed ``vssm train`` flags: the ``--preset`` recipe, if any, under the flags given."""
    from .train import TrainConfig

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    preset = given.pop("preset", "")
    try:
        return TrainConfig.from_preset(preset, **given) if preset else TrainConfig(**given)
    except ValueError as e:  # a bad flag value: say which, without a traceback
        raise SystemExit(f"vssm train: error: {e}") from None


def _train(args: argparse.Namespace) -> None:
    from .train import train

    train(train_config(args))


def _eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_cli

    evaluate_cli(args)


def _set_block_size(args: argparse.Namespace) -> None:
    from .checkpoint import set_default_block_size

    set_default_block_size(args.checkpoint, args.block_size or None)


def _set_observation_temperature(args: argparse.Namespace) -> None:
    from .checkpoint import CheckpointError, set_observation_temperature

    try:
        set_observation_temperature(args.checkpoint, args.ratio)
    except CheckpointError as exc:
        raise SystemExit(f"vssm set-observation-temperature: {exc}") from None


def _sample(args: argparse.Namespace) -> None:
    from .render import sample_cli

    sample_cli(args)


def _judge_train(args: argparse.Namespace) -> None:
    from .judge import JudgeTrainConfig, judge_train

    judge_train(JudgeTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(JudgeTrainConfig)}))


def build_parser(prog: str = "vssm") -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog=prog, description="Train, evaluate and sample VSSM models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    add_model_commands(sub)
    return parser, sub


def main(argv: Sequence[str] | None = None) -> int:
    parser, _ = build_parser("python -m vssm.model")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
