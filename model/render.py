"""``vssm sample``: PNG grids for image models, text files for text models.

Glossary of axis letters:
    B  samples      T  tokens per image (rows * cols * channels)      R, W  image rows, columns
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import SequenceModel
from .checkpoint import load_checkpoint, read_metadata
from .data import load_dataset

__all__ = ["image_grid", "sample_cli", "sample_images", "sample_text"]

log = logging.getLogger(__name__)


def _to_pixels(seqs: torch.Tensor, shape: tuple[int, ...], vocab: int) -> np.ndarray:
    x = seqs.cpu().numpy().reshape(len(seqs), *shape)  # (B, R, W[, 3])
    return (x * (255 // (vocab - 1))).astype(np.uint8)


def image_grid(
    images: np.ndarray, cols: int, scale: int = 3, pad: int = 2, marks: list[int] | None = None
) -> Image.Image:
    """Tile ``images`` (B, R, W[, 3]) uint8 into one picture; ``marks`` draws a red line under row r."""
    B, R, W = images.shape[:3]
    rows = (B + cols - 1) // cols
    canvas = np.full((rows * (R + pad) + pad, cols * (W + pad) + pad, 3), 128, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        rgb = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=-1)
        y, x = pad + r * (R + pad), pad + c * (W + pad)
        canvas[y : y + R, x : x + W] = rgb
        if marks is not None and marks[i] > 0:
            canvas[y + marks[i] - 1, x : x + W] = (canvas[y + marks[i] - 1, x : x + W] // 2) + np.array(
                [127, 0, 0], dtype=np.uint8
            )
    return Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)


@torch.no_grad()
def sample_images(
    model: SequenceModel,
    shape: tuple[int, ...],
    n: int,
    seed: int,
    temperature: float,
    real: torch.Tensor | None = None,
    prompt_rows: int = 0,
    block_size: int | None = None,
) -> tuple[Image.Image, torch.Tensor]:
    """Unconditional grid (``real`` None) or prompted grid: pairs [real | completion] per image."""
    T = int(np.prod(shape))
    per_row = T // shape[0]
    seeds = list(range(seed, seed + n))
    if real is None:
        state = model.start(torch.zeros(n, 0, dtype=torch.long), seeds)
        seqs, _ = model.generate(state, T, temperature=temperature, resumable=False, block_size=block_size)
        return image_grid(_to_pixels(seqs, shape, model.vocab_size), cols=int(np.ceil(np.sqrt(n)))), seqs
    C = prompt_rows * per_row
    prompt = real[:n, :C]
    cont, _ = model.generate(
        model.start(prompt, seeds), T - C, temperature=temperature, resumable=False, block_size=block_size
    )
    seqs = torch.cat([prompt.to(cont.device), cont], dim=1)
    pairs = torch.stack([real[:n].to(seqs.device), seqs], dim=1).reshape(2 * n, T)  # real, completion, real, ...
    marks = [0, prompt_rows] * n
    grid = image_grid(_to_pixels(pairs, shape, model.vocab_size), cols=8 if n >= 4 else 2 * n, marks=marks)
    return grid, seqs


@torch.no_grad()
def sample_text(
    model: SequenceModel,
    prompt: str,
    length: int,
    n: int,
    seed: int,
    temperature: float,
    block_size: int | None = None,
) -> list[str]:
    p = torch.tensor([list(prompt.encode())] * n, dtype=torch.long)
    if model.max_position is not None and p.shape[1] + length > model.max_position:
        length = model.max_position - p.shape[1]  # a transformer's context ends there
        log.warning("generating %d bytes: the model's maximum position is %d", length, model.max_position)
    state = model.start(p, list(range(seed, seed + n)))
    out, _ = model.generate(state, length, temperature=temperature, resumable=False, block_size=block_size)
    return [prompt + bytes(row).decode("utf-8", errors="replace") for row in out.tolist()]


def sample_cli(args: argparse.Namespace) -> None:
    model = load_checkpoint(args.checkpoint, device=args.device)
    dataset = read_metadata(args.checkpoint).get("dataset", "")  # the real images beside prompted samples
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # only a file type is dropped from the prefix: "mnist-t0.3" must not lose its ".3"
    prefix = out.stem if out.suffix in (".png", ".txt") else out.name
    if model.modality.kind == "image":  # model/modality.py: recorded in the checkpoint
        assert model.modality.shape is not None
        shape = model.modality.shape

        def save(grid: Image.Image, kind: str) -> None:
            path = out.with_name(f"{prefix}-{kind}.png")
            grid.save(path)
            log.info("wrote %s", path)

        block = args.block_size
        save(sample_images(model, shape, args.n, args.seed, args.temperature, block_size=block)[0], "unconditional")
        real = load_dataset(dataset, args.data_dir).test[: args.n]
        prompted = sample_images(
            model, shape, args.n, args.seed, args.temperature, real, args.prompt_rows, block_size=block
        )
        save(prompted[0], "prompted")
    elif model.modality.is_text:
        texts = sample_text(
            model, args.prompt, args.length, min(args.n, 4), args.seed, args.temperature, args.block_size
        )
        path = out.with_name(prefix + ".txt")
        path.write_text("\n\n---\n\n".join(texts) + "\n")
        log.info("wrote %s", path)
    else:
        raise SystemExit(f"vssm sample: {args.checkpoint} records no image shape or text encoding to render")
