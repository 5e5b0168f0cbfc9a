"""Streamlit page file: the Queue page (semwatch.app.queue_page)."""

from semwatch.app import queue_page
from semwatch.app.context import AppContext

queue_page.render(AppContext.load())
