"""The web UI (`semwatch app`): a Streamlit page to colorize uploads with colour hints and a
window onto the service's queue.

Layout: ``launch`` (the `semwatch app` command; no Streamlit import), ``main`` (the script
Streamlit runs: navigation) and ``pages/`` (one small file per page), ``colorize_page`` and
``queue_page`` (the pages' content), ``context`` (configuration and the shared model),
``service`` (the one place the UI decodes, colorizes and writes), ``queue_view`` (read-only
queue access, path containment, refined names), ``widgets`` (click-to-hint component
wrapper, before/after slider), ``acquisition`` (the vendor settings worth showing).
"""

from __future__ import annotations

from pathlib import Path

# The script `semwatch app` hands to `streamlit run`.
APP_SCRIPT = Path(__file__).with_name("main.py")
