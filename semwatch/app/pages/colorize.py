"""Streamlit page file: the Colorize page (semwatch.app.colorize_page)."""

from semwatch.app import colorize_page
from semwatch.app.context import AppContext

colorize_page.render(AppContext.load())
