"""Which generator file to load: the configured one, else the bundled default; the one place
that says "no model" (the daemon's start-up check, `semwatch colorize`, `semwatch compile`)."""

from __future__ import annotations

from pathlib import Path


def model_file(model: Path | None, *, where: str = "") -> Path:
    """``model`` (engine.model or --model), else the bundled default model; a ModelError
    naming the key (and ``where``: " (in FILE)") when that file is not there."""
    # semwatch.model imports torch: only when asked (a watcher's start-up check never is).
    from semwatch import model as generator_files

    if model is None:
        bundled = generator_files.default_model_path()
        if not bundled.is_file():
            raise generator_files.ModelError(
                f"no model: engine.model is not set{where} and the bundled default model "
                f"({bundled}) is not installed; set engine.model = "
                '"/path/to/generator.safetensors" in the [engine] section (or pass --model FILE)'
            )
        return bundled
    if not Path(model).is_file():
        raise generator_files.ModelError(f"{model}: model file not found (engine.model{where})")
    return Path(model)
