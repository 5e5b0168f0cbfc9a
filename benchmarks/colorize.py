"""End-to-end colorization speed for one large SEM image, step by step: fp32 against the
new defaults, in one run.

    python benchmarks/colorize.py [--image FILE] [--model FILE] [--chroma-size 512]
                                  [--repeats 7] [--warmup 2] [--threads N]
                                  [--pipeline-images 12] [--pipeline-runs 3] [--style-only]

Three engine configurations, all with the service's refinements, batch of 1:

- before:   fp32, NCHW, and the whole-image full-resolution step this project had before
            issue 13 (kept here only as the yardstick),
- fp32:     precision = "fp32", channels_last = false (today's engine otherwise),
- defaults: the engine's defaults (precision and channels_last "auto": bf16 where the CPU
            computes it natively, channels-last).

They run in turn, run after run (before, fp32, defaults, before, ...), so a change in the
machine's load touches all three alike. Each step is timed inside the real call path:
decode, network input (down-scale), network, refinements at the network's resolution
(hue coherence, regions; then the guided filter's coefficients), the full-resolution step
(up-sampling, filter, chroma table), TIFF write. Printed: the median seconds per image of
every step, the median of the per-run ratio defaults/fp32 and defaults/before, the engine's
CPU seconds per image (less sensitive to other processes than wall time), and the largest
difference of the delivered ab (before the 8-bit chroma table) from fp32. Then the same
three through `semwatch colorize`'s own pipeline (semwatch.pipeline.Pipeline: decode and write threads
overlapping the engine, batches of 4) on --pipeline-images copies of the image. Last, the
cost of a style (issue 20) and of a palette (issue 23): the defaults' engine time with
nothing, with a style made from six hints on the frame, and with a three-colour palette,
interleaved; --style-only runs just that.
Speed does not depend on the weights: without the bundled model, a randomly initialised
generator of the default architecture is timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from machine import describe_machine  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "sem-real" / "pollen-hibiscus-300x.png"
STEPS = [
    "decode",
    "network input",
    "network",
    "refinements",
    "filter coefficients",
    "full resolution",
    "engine, other",
    "write",
]


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


class StepClock:
    """Seconds spent in each named step during one image."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, step: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[step] += time.perf_counter() - start

        return timed


def previous_compose(colorizer, image, pred) -> torch.Tensor:
    """The full-resolution step as it was before issue 13: whole-image bilinear up-sampling
    of the filter's coefficients, the filter, then the chroma table (yardstick only)."""
    gray_all = torch.from_numpy(image.gray)
    height, width = image.gray.shape
    rows = colorizer._colour_rows(image)
    out = torch.empty((height, width, 3), dtype=torch.uint8)
    if rows and pred is not None:
        gray = gray_all[:rows]
        planes = colorizer._low_res_planes(pred)
        up = F.interpolate(planes[None], size=(rows, width), mode="bilinear", align_corners=False)[0]
        if planes.shape[0] == 4:
            a, b = up.chunk(2)
            up = torch.addcmul(b, a, colorizer._l_table[gray.long()][None])
        idx = colorizer.lut.index(gray, up)
        torch.index_select(colorizer.lut.table, 0, idx.reshape(-1), out=out[:rows].view(-1, 3))
    if rows < height:
        out[rows:] = gray_all[rows:, :, None]
    return out


class TimedBackend:
    """The colorizer's backend, called through a timer (name, precision etc. pass through)."""

    def __init__(self, backend, timed_call: Callable):
        self._backend = backend
        self._call = timed_call

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self._call(batch)

    def __getattr__(self, name: str):
        return getattr(self._backend, name)


def instrument(colorizer, clock: StepClock, previous: bool) -> None:
    """Time the engine's steps through its own call path (instance attributes shadow the
    methods; the backend is wrapped in a timing callable)."""
    colorizer.backend = TimedBackend(colorizer.backend, clock.wrap("network", colorizer.backend))
    colorizer._lightness_input = clock.wrap("network input", colorizer._lightness_input)
    colorizer._refine = clock.wrap("refinements", colorizer._refine)
    low_res = clock.wrap("filter coefficients", colorizer._low_res_planes)
    colorizer._low_res_planes = low_res
    if previous:
        compose = lambda image, pred: previous_compose(colorizer, image, pred)  # noqa: E731
    else:
        compose = colorizer._compose
    colorizer._compose = clock.wrap("full resolution", compose)


def run_once(colorizer, clock: StepClock, image_path: Path, target: Path) -> tuple[dict[str, float], float]:
    from semwatch.pipeline import OutputSettings, Task, decode, write_output

    clock.seconds.clear()
    start = time.perf_counter()
    decoded = decode(image_path, max_pixels=200_000_000)
    clock.seconds["decode"] = time.perf_counter() - start
    engine_start, cpu_start = time.perf_counter(), time.process_time()
    rgb = colorizer.colorize([decoded])[0]
    engine = time.perf_counter() - engine_start
    cpu = time.process_time() - cpu_start
    start = time.perf_counter()
    write_output(Task(image_path, target), decoded, rgb, colorizer.info, OutputSettings("tiff"))
    clock.seconds["write"] = time.perf_counter() - start
    # The filter's coefficients are computed inside the full-resolution call: count them once.
    clock.seconds["full resolution"] -= clock.seconds["filter coefficients"]
    parts = ("network input", "network", "refinements", "filter coefficients", "full resolution")
    clock.seconds["engine, other"] = engine - sum(clock.seconds[p] for p in parts)
    steps = dict(clock.seconds)
    steps["engine"] = engine
    steps["total"] = steps["decode"] + engine + steps["write"]
    return steps, cpu


def pipelined(engines: dict, image: Path, folder: Path, count: int, runs: int) -> None:
    """``semwatch colorize`` on ``count`` copies of the image: its own pipeline, decode and
    write threads overlapping the engine, batches of the CLI's default size (4); seconds
    per image over the whole run, median of ``runs``, configurations interleaved."""
    import shutil

    from semwatch.config import EngineConfig
    from semwatch.pipeline import OutputSettings, Pipeline, Task

    sources = folder / "many"
    sources.mkdir(exist_ok=True)
    tasks = []
    for i in range(count):
        source = sources / f"{i:03d}{image.suffix}"
        shutil.copyfile(image, source)
        tasks.append(Task(source, folder / "out" / f"{i:03d}.tif"))
    per_image: dict[str, list[float]] = defaultdict(list)
    for _ in range(runs):
        for name, colorizer in engines.items():
            colorizer.batch_size = EngineConfig.batch_size
            start = time.perf_counter()
            results = Pipeline(colorizer, OutputSettings("tiff"), max_pixels=EngineConfig.max_pixels).run(
                tasks
            )
            failures = sum(not result.ok for result in results)
            per_image[name].append((time.perf_counter() - start) / count)
            colorizer.batch_size = 1
            if failures:
                raise SystemExit(f"{failures} images failed")
    ratios = {
        base: statistics.median(a / b for a, b in zip(per_image["defaults"], per_image[base]))
        for base in ("fp32", "before")
    }
    print(
        f"semwatch colorize, {count} images, batches of {EngineConfig.batch_size}, decode/write "
        f"overlapped (s per image, median of {runs}): "
        + ", ".join(f"{name} {statistics.median(v):.3f}" for name, v in per_image.items())
        + f"; defaults/fp32 {ratios['fp32']:.2f}, defaults/before {ratios['before']:.2f}"
    )


# Hints the style is made of, as fractions of the frame (x, y): on the default image (the
# hibiscus pollen frame) the first three fall on pollen grains, the last three on the
# background ring and the dark field. Where they fall does not change the cost.
STYLE_HINTS = [
    (0.42, 0.55, "#e0b030"),
    (0.40, 0.33, "#e0b030"),
    (0.53, 0.12, "#e0b030"),
    (0.10, 0.58, "#3060c0"),
    (0.12, 0.15, "#3060c0"),
    (0.08, 0.83, "#3060c0"),
]
BENCH_PALETTE = "#e0b030,#3060d0,#d03030"


def style_overhead(colorizer, decoded, repeats: int, warmup: int) -> None:
    """Engine seconds for the frame with nothing, with a style (made from STYLE_HINTS on the
    frame itself) and with BENCH_PALETTE, interleaved run after run; the medians of the
    per-run ratios."""
    from semwatch.hints import Hint
    from semwatch.palette import parse_palette
    from semwatch.styles import make_style

    height, width = decoded.gray.shape
    hints = [Hint.from_color(x * width, y * height, color) for x, y, color in STYLE_HINTS]
    style = make_style(
        colorizer, decoded, hints, name="bench", source_name="frame", source_sha256=decoded.sha256
    )
    palette = parse_palette(BENCH_PALETTE)
    samples: dict[str, list[float]] = defaultdict(list)
    for run in range(warmup + repeats):
        for name, kwargs in (
            ("automatic", {}),
            ("style", {"styles": [style]}),
            ("palette", {"palettes": [palette]}),
        ):
            start = time.perf_counter()
            colorizer.colorize([decoded], **kwargs)
            if run >= warmup:
                samples[name].append(time.perf_counter() - start)

    def ratio(name: str) -> float:
        return statistics.median(a / b for a, b in zip(samples[name], samples["automatic"]))

    print(
        f"style: engine s per {width}x{height} frame, median of {repeats}: automatic "
        f"{statistics.median(samples['automatic']):.3f}, with a style of {len(hints)} prototypes "
        f"{statistics.median(samples['style']):.3f}; style/automatic {ratio('style'):.3f}"
    )
    print(
        f"palette: with {BENCH_PALETTE} {statistics.median(samples['palette']):.3f}; "
        f"palette/automatic {ratio('palette'):.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--chroma-size", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--pipeline-images", type=int, default=12, help="images for the `semwatch colorize` part (0: skip it)"
    )
    parser.add_argument("--pipeline-runs", type=int, default=3)
    parser.add_argument(
        "--style-only",
        action="store_true",
        help="only the style and palette part: engine time with nothing, a style, a palette",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from semwatch.config import EngineConfig
    from semwatch.engine import Colorizer
    from semwatch.imaging import read_image

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = args.image or (DEFAULT_IMAGE if DEFAULT_IMAGE.is_file() else synthetic_image(folder))
        model, model_desc = model_file(args.model, folder)
        decoded = read_image(image)
        defaults = EngineConfig(model=model, device="cpu", chroma_size=args.chroma_size, batch_size=1)
        if args.style_only:
            print(f"machine: {describe_machine()}")
            print(f"image:   {image.name}; model: {model_desc}; chroma_size {args.chroma_size}, defaults")
            style_overhead(Colorizer.from_config(defaults), decoded, args.repeats, args.warmup)
            return 0
        fp32 = dataclasses.replace(defaults, precision="fp32", channels_last=False)
        configs = {"before": (fp32, True), "fp32": (fp32, False), "defaults": (defaults, False)}
        engines, clocks, setup = {}, {}, {}
        for name, (cfg, previous) in configs.items():
            start = time.perf_counter()
            engines[name] = Colorizer.from_config(cfg)
            setup[name] = time.perf_counter() - start
            clocks[name] = StepClock()
            instrument(engines[name], clocks[name], previous)
        print(f"machine: {describe_machine()}")
        print(
            f"image:   {image.name} {decoded.gray.shape[1]}x{decoded.gray.shape[0]} "
            f"{decoded.source_dtype}, data bar from row {decoded.databar_row}"
        )
        print(f"model:   {model_desc}; chroma_size {args.chroma_size}, service refinements")
        print(
            f"engines: before = fp32 NCHW + previous full-res step; fp32 = precision fp32, "
            f"channels_last false; defaults = precision {engines['defaults'].precision}, "
            f"channels_last auto"
        )
        print(
            f"runs:    median of {args.repeats} after {args.warmup} warm-up, configurations "
            "interleaved, batch of 1, steps sequential (no decode/write overlap)"
        )
        sys.stdout.flush()
        samples = {name: defaultdict(list) for name in configs}
        for run in range(args.warmup + args.repeats):
            for name in configs:
                steps, cpu = run_once(engines[name], clocks[name], image, folder / f"{name}.tif")
                if run >= args.warmup:
                    for step, seconds in steps.items():
                        samples[name][step].append(seconds)
                    samples[name]["engine CPU s"].append(cpu)

        def median(name: str, step: str) -> float:
            return statistics.median(samples[name][step])

        def ratio(step: str, base: str) -> float:
            pairs = zip(samples["defaults"][step], samples[base][step])
            return statistics.median(a / b for a, b in pairs if b > 0)

        header = (
            f"{'step (s per image)':<22} {'before':>8} {'fp32':>8} {'defaults':>9} "
            f"{'defaults/fp32':>14} {'defaults/before':>16}"
        )
        print(header)
        print("-" * len(header))
        for step in [*STEPS, "engine", "engine CPU s", "total"]:
            print(
                f"{step:<22} {median('before', step):>8.3f} {median('fp32', step):>8.3f} "
                f"{median('defaults', step):>9.3f} {ratio(step, 'fp32'):>14.2f} "
                f"{ratio(step, 'before'):>16.2f}"
            )
        print(
            "set-up (model load + chroma table), s: "
            + ", ".join(f"{name} {seconds:.2f}" for name, seconds in setup.items())
        )
        if args.pipeline_images:
            pipelined(engines, image, folder, args.pipeline_images, args.pipeline_runs)
        style_overhead(Colorizer.from_config(defaults), decoded, args.repeats, args.warmup)
        reference = engines["fp32"].predict_ab([decoded])[0]
        delivered = engines["defaults"].predict_ab([decoded])[0]
        print(
            f"largest |ab(defaults) - ab(fp32)| before the chroma table: "
            f"{(delivered - reference).abs().max().item():.3f} Lab units"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
