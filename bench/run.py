"""Run the benchmark suite: ``python -m bench.run [--quick] [--out docs/benchmarks.json] [--threads N]``.

Writes the JSON, ``benchmarks.md`` beside it and PNG plots into ``img/`` beside it.  The full run
(``make bench``) writes ``docs/``; ``--quick`` (the CI smoke test, under a minute) writes into a
fresh temporary directory unless ``--out`` is given, so it never overwrites committed results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .blocks import run_blocks
from .common import FULL, QUICK, build_models, machine_info, matched_configs, parameter_counts, with_block_vssm
from .generation import run_generation
from .limit import run_limit
from .report import table1_lines, write_markdown, write_plots
from .resume import run_resume
from .rounds import one_pass_flops, run_rounds
from .scan import run_scan
from .serving import run as run_serving_suite
from .table1 import run_table1
from .targets import evaluate_targets
from .training import run_training

log = logging.getLogger("bench")

SCHEMA = "vssm-bench/1"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.json"


def _ar_net(models: dict[str, Any]) -> Any:
    """The AR-SSM's network (part 8 compares a whole sequence's FLOPs with block sampling's)."""
    return getattr(models.get("ar-ssm"), "net", None)


def run_serving(quick: bool, threads: int) -> dict[str, Any]:
    """Part 4 needs redis-server and a free loopback port; say why when it cannot run."""
    try:
        return run_serving_suite(quick=quick, threads=threads)
    except (RuntimeError, OSError, TimeoutError) as exc:
        log.warning("serving benchmark skipped: %s", exc)
        return {"skipped": True, "note": f"skipped: {exc}"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI smoke test: tiny grid, under a minute")
    p.add_argument("--out", type=Path, default=None, help=f"JSON path (default: {DEFAULT_OUT}; quick: a temp dir)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    p.add_argument(
        "--only",
        choices=("blocks", "rounds", "serving"),
        default=None,
        help="run one part alone and write only its JSON (no report, no plots; never the committed file by default)",
    )
    return p.parse_args(argv)


def run(args: argparse.Namespace, command: str) -> tuple[dict[str, Any], Path]:
    if args.threads:
        torch.set_num_threads(args.threads)
    s = QUICK if args.quick else FULL
    scratch = args.quick or args.only
    out = args.out or (Path(tempfile.mkdtemp(prefix="vssm-bench-")) / "benchmarks.json" if scratch else DEFAULT_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    machine = machine_info(command)
    log.info("bench %s mode on %s, %d threads -> %s", s.mode, machine["cpu"], machine["threads"], out)
    busy = machine["load_average_start"][0]
    if machine["threads"] > 1 and busy + machine["threads"] > machine["usable_cores"] + 0.5:
        # Measured here: with 2 threads on 2 cores busy with training, a 64-token AR-SSM run took
        # 2.8 s instead of 0.04 s (intra-op threads wait for descheduled peers).
        log.warning(
            "load average %.1f on %d cores: %d threads will oversubscribe them; consider --threads 1",
            busy,
            machine["usable_cores"],
            machine["threads"],
        )

    configs = matched_configs()
    longest = max(max(s.gen_lengths), max(s.resume_positions) + s.chunk)
    models = build_models(configs, longest)
    results: dict[str, Any] = {"schema": SCHEMA, "mode": s.mode, "machine": machine}
    if args.only:
        part = args.only
        if part == "serving":
            results[part] = run_serving(s.mode == "quick", machine["threads"])
        elif part == "blocks":
            results[part] = run_blocks(with_block_vssm(models), s)
        else:
            results[part] = run_rounds(with_block_vssm(models)["vssm"], s, s.mode == "quick", _ar_net(models))  # type: ignore[arg-type]
        machine["load_average_end"] = list(os.getloadavg())
        results["elapsed_s"] = time.perf_counter() - t0
        out.write_text(json.dumps(results, indent=1) + "\n")
        return results, out
    results["params"] = parameter_counts(configs)
    results["generation"] = run_generation(models, s)
    ar_net = _ar_net(models)
    if ar_net is not None:  # the cost model of part 1's one pass, beside its times (bench/targets.py reads both)
        vssm = models["vssm"]
        flops = {str(T): one_pass_flops(vssm, ar_net, T) for T in s.gen_lengths}  # type: ignore[arg-type]
        results["generation"]["one_pass_flops"] = flops
    results["limit"] = run_limit(models["vssm"], s)  # type: ignore[arg-type]
    results["resume"] = run_resume(models, s)
    results["table1"] = run_table1(models, results, s)  # reads parts 1 and 3
    block_models = with_block_vssm(models)  # parts 7 and 8 time the served block model's shapes
    results["blocks"] = run_blocks(block_models, s)
    results["rounds"] = run_rounds(block_models["vssm"], s, s.mode == "quick", _ar_net(models))  # type: ignore[arg-type]
    results["serving"] = run_serving(s.mode == "quick", machine["threads"])
    results["training"] = run_training(configs, s)
    results["ssm_parallel_mode"] = run_scan(quick=s.mode == "quick")
    results["targets"] = evaluate_targets(results, s)
    machine["load_average_end"] = list(os.getloadavg())
    results["elapsed_s"] = time.perf_counter() - t0
    results["plots"] = write_plots(results, out.parent / "img")
    out.write_text(json.dumps(results, indent=1) + "\n")
    write_markdown(results, out.with_name("benchmarks.md"))
    return results, out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per serving request otherwise
    args = parse_args(argv)
    command = "python -m bench.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    results, out = run(args, command.strip())
    print(f"\n{results['mode']} benchmark in {results['elapsed_s']:.0f} s -> {out}")
    for t in results.get("targets", []):
        value = "-" if t["measured"] is None else f"{t['measured']:.2f}"
        print(f"  {t['status']:4}  {value:>8}  (want {t['target']})  {t['what']}  [{t['conditions']}]")
    if "table1" in results:
        print("\nTable 1, measured (paper -> measured; see benchmarks.md for the thresholds):")
        print("\n".join("  " + line for line in table1_lines(results["table1"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
