"""End-to-end colorization speed for one large SEM image: decode -> engine -> TIFF write.

    python benchmarks/colorize.py [--image FILE] [--model FILE] [--chroma-size 384 512 ...]

Prints the machine, the one-off set-up cost (model load + chroma table), and for each chroma
size the median seconds per image of each step and of the whole sequence, over --repeats
runs after --warmup runs. Speed does not depend on the weights, so without the bundled
model a randomly initialised generator of the default architecture is timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from machine import describe_machine  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "sem-real" / "pollen-hibiscus-300x.png"


def synthetic_image(folder: Path) -> Path:
    """A 2560x2048 8-bit gray PNG with texture and a data bar, for machines without the data."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:2048, 0:2560].astype(np.float32)
    img = 120 + 50 * np.sin(x / 40) * np.cos(y / 55) + rng.normal(0, 15, (2048, 2560))
    img[1920:] = 0
    img[1950:2000, 100:900] = 255
    path = folder / "synthetic-2560x2048.png"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def model_file(given: Path | None, folder: Path) -> tuple[Path, str]:
    from semwatch.model import build_generator, default_model_path, save_generator

    if given is not None:
        return given, str(given)
    if default_model_path().is_file():
        return default_model_path(), "bundled default"
    path = folder / "random-default-architecture.safetensors"
    model = build_generator()
    save_generator(path, model, model.config, {"name": "random"}, dtype=torch.float16)
    return path, "random weights, default architecture (no bundled model yet)"


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench_chroma(image_path: Path, model: Path, chroma: int, warmup: int, repeats: int,
                 out_dir: Path) -> dict[str, float]:
    from semwatch.engine import Colorizer
    from semwatch.imaging import build_provenance, read_image, write_image

    from semwatch.config import EngineConfig

    # The service's defaults (refinements included), one image per batch.
    settings = EngineConfig(model=model, device="cpu", chroma_size=chroma, batch_size=1)
    colorizer, setup = timed(lambda: Colorizer.from_config(settings))
    samples: dict[str, list[float]] = {"decode": [], "engine": [], "write": [], "total": []}
    target = out_dir / f"out-{chroma}.tif"
    for run in range(warmup + repeats):
        decoded, t_decode = timed(lambda: read_image(image_path))
        rgb, t_engine = timed(lambda: colorizer.colorize([decoded])[0])
        provenance = build_provenance(
            decoded, source_path=str(image_path), model_name=colorizer.model_name,
            model_sha256=colorizer.model_sha256, backend=colorizer.backend_name,
            device=colorizer.device, chroma_size=chroma, refinement=colorizer.refinement.as_dict())
        _, t_write = timed(lambda: write_image(target, rgb, fmt="tiff", metadata=decoded.metadata,
                                               provenance=provenance))
        if run >= warmup:
            samples["decode"].append(t_decode)
            samples["engine"].append(t_engine)
            samples["write"].append(t_write)
            samples["total"].append(t_decode + t_engine + t_write)
    result = {k: statistics.median(v) for k, v in samples.items()}
    result["setup"] = setup
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--chroma-size", type=int, nargs="+", default=[512])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = args.image or (DEFAULT_IMAGE if DEFAULT_IMAGE.is_file() else synthetic_image(folder))
        model, model_desc = model_file(args.model, folder)
        from semwatch.imaging import read_image

        decoded = read_image(image)
        print(f"machine: {describe_machine()}")
        print(f"image:   {image.name} {decoded.gray.shape[1]}x{decoded.gray.shape[0]} "
              f"{decoded.source_dtype}, data bar from row {decoded.databar_row}")
        print(f"model:   {model_desc}")
        print(f"runs:    median of {args.repeats} after {args.warmup} warm-up, batch of 1, "
              "sequential (no overlap of decode/compute/write)")
        print(f"{'chroma':>6} {'setup s':>8} {'decode s':>9} {'engine s':>9} {'write s':>8} "
              f"{'total s/img':>12}")
        for chroma in args.chroma_size:
            r = bench_chroma(image, model, chroma, args.warmup, args.repeats, folder)
            print(f"{chroma:>6} {r['setup']:>8.2f} {r['decode']:>9.3f} {r['engine']:>9.3f} "
                  f"{r['write']:>8.3f} {r['total']:>12.3f}")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
