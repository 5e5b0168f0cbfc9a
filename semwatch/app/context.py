"""What every page gets: the configuration and the shared model."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from semwatch.config import Config, EngineConfig, load_config
from semwatch.engine import Colorizer

# Page files, relative to main.py (st.Page and st.switch_page take these paths).
COLORIZE_PAGE = "pages/colorize.py"
QUEUE_PAGE = "pages/queue.py"


@st.cache_resource(show_spinner="Loading the model (once per server)...")
def _shared_colorizer(engine: EngineConfig) -> Colorizer:
    # Keyed by the engine settings: every session of this process gets the same model.
    from semwatch.app.service import load_colorizer

    return load_colorizer(engine)


@dataclass(frozen=True)
class AppContext:
    config: Config

    @classmethod
    def load(cls) -> AppContext:
        """The configuration `semwatch app` was started with ($SEMWATCH_CONFIG), read at
        each page run (a few hundred microseconds; main.py reports a broken file)."""
        return cls(load_config())

    def colorizer(self) -> Colorizer:
        return _shared_colorizer(self.config.engine)
