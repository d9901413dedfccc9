"""Render a digit completion as text: ``curl ... | python3 scripts/show_digit.py``.

Reads a completion (or a session chunk) JSON on stdin; with ``--prompt FILE`` the request's prompt
is drawn first, so the 28 x 28 image is whole.  '#' is ink, '.' paper, '|' marks generated rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--prompt", help="the request JSON whose prompt came before the completion")
    args = p.parse_args()
    body = json.load(sys.stdin)
    tokens = body["choices"][0]["tokens"] if "choices" in body else body["tokens"]
    prompt = json.loads(Path(args.prompt).read_text())["prompt"] if args.prompt else []
    pixels = prompt + tokens
    for r in range(len(pixels) // 28):
        row = "".join("#" if v else "." for v in pixels[28 * r : 28 * r + 28])
        sys.stdout.write(("| " if 28 * r >= len(prompt) else "  ") + row + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
