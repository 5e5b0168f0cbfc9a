"""Shared fixtures: the sample-data folder, small generator files made on the spot, torch on one thread."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import postgres_server
import pytest
import torch

from semwatch.model import GeneratorConfig, build_generator, save_generator

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEM_REAL = SHARED_DATA / "sem-real"


# --------------------------------------------------------------------------- must run under CI


def under_ci() -> bool:
    """CI is set to a true value ("true" or "1", as CI services and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def cannot_run(reason: str) -> NoReturn:
    """The one rule for a test whose tool, data, server or privilege is missing here: on a
    developer's machine it skips with the reason; under CI it fails, because a skip there
    would hide that CI no longer checks the guarantee (.ci/run installs what these need).
    Only what CI cannot have either (a GPU, TensorRT) may skip without this."""
    if under_ci():
        pytest.fail(f"must run under CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)  # also at a module's top (a missing package)


def sem_real_files() -> list[Path]:
    """Every real SEM sample (empty when ../shared is absent: tests using it go through sem_real)."""
    return sorted(SEM_REAL.glob("*")) if SEM_REAL.is_dir() else []


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        cannot_run(f"{SHARED_DATA} (../shared/data) is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sem_real(shared_data: Path) -> Path:
    """The real SEM samples' folder (../shared/data/sem-real), or cannot_run."""
    if not sem_real_files():
        cannot_run(f"{SEM_REAL} holds no samples")
    return SEM_REAL


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


@pytest.fixture(scope="session")
def tiny_colorizer(tiny_model: Path):  # noqa: ANN201 - semwatch.engine.Colorizer, imported lazily
    """One Colorizer of the tiny generator (CPU, chroma 128, batches of 3) for the session:
    the tests that only colorize with it share it instead of loading their own. Read-only:
    a test that changes an engine's settings builds its own."""
    from semwatch.engine import Colorizer

    return Colorizer.from_file(tiny_model, device="cpu", chroma_size=128, batch_size=3)


# --------------------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A PostgreSQL server for the session: CI's (SEMWATCH_TEST_POSTGRES_URL), else a
    throw-away cluster started here; else cannot_run (a skip, a failure under CI)."""
    url = os.environ.get(postgres_server.ENV_URL)
    if url:
        yield url
        return
    reason = postgres_server.unavailable_reason()
    if reason is not None:
        cannot_run(f"no PostgreSQL server: {reason}")
    with postgres_server.cluster() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty database of its own for each test."""
    url = postgres_server.fresh_database(postgres_admin_url)
    yield url
    postgres_server.drop_database(postgres_admin_url, url)


# A test on PostgreSQL pays for a fresh database (seconds) and needs a server: it runs with
# the full suite (CI), not in the fast loop, whether it asks for the server directly or
# through database_url's "postgresql" variant.
POSTGRES_FIXTURES = ("postgres_url", "postgres_admin_url")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in POSTGRES_FIXTURES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The queue database, once per supported back-end: a SQLite file, a PostgreSQL database
    (slow: the full suite's)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    return request.getfixturevalue("postgres_url")
