"""Shared fixtures: the sample-data folder, small generator files made on the spot, torch on one thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from semwatch.model import GeneratorConfig, build_generator, save_generator

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEM_REAL = SHARED_DATA / "sem-real"


def sem_real_files() -> list[Path]:
    """Every real SEM sample (empty when ../shared is absent: tests using it skip)."""
    return sorted(SEM_REAL.glob("*")) if SEM_REAL.is_dir() else []


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures(...)``).

    On the oversubscribed test machine OpenMP's spinning threads make small CPU training
    several times slower, not faster. Module scope, so that it is in force before the
    module's other module-scoped fixtures (a mark's fixtures are set up before arguments').
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised generator file (narrow decoder: fast on a CPU)."""
    torch.manual_seed(0)
    config = GeneratorConfig(decoder_width=8)
    model = build_generator(config)
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_generator(path, model, config, {"name": "tiny-random"})
    return path
