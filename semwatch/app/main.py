"""The script `semwatch app` runs under Streamlit: page setup, configuration, navigation.

Streamlit re-runs this file and the current page file on every interaction; what must live
longer is cached: the model (once per process, shared by every session, see context.py).
The configuration file is the one `semwatch app --config` was given ($SEMWATCH_CONFIG).
"""

from __future__ import annotations

import streamlit as st

from semwatch.app.context import COLORIZE_PAGE, QUEUE_PAGE
from semwatch.config import ConfigError, load_config
from semwatch.log import configure_cli_logging, get_logger


@st.cache_resource(show_spinner=False)
def _configure_logging(level: str, fmt: str) -> None:
    # Once per process (and again only if the settings change), not at every rerun.
    configure_cli_logging(level, fmt)  # type: ignore[arg-type]


def _main() -> None:
    st.set_page_config(page_title="semwatch", layout="wide")
    try:
        config = load_config()
    except ConfigError as exc:
        get_logger(__name__).error("configuration error", error=str(exc))
        st.error(f"Configuration error: {exc}")
        st.stop()
    _configure_logging(config.logging.level, config.logging.format)
    pages = [
        st.Page(COLORIZE_PAGE, title="Colorize", icon=":material/palette:", default=True),
        st.Page(QUEUE_PAGE, title="Queue", icon=":material/list:"),
    ]
    # At the top, not in a sidebar: the clickable image gets the page's whole width.
    st.navigation(pages, position="top").run()


_main()
