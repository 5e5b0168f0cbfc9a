"""Imported at start-up by the test's `semwatch app` server only (this folder is on its
PYTHONPATH, never on pytest's): while the file named by $SEMWATCH_TEST_HOLD exists, every
full colorization waits. A browser test can then look at the page between a click and its
result, without guessing how long the engine takes."""

import os
import time

HOLD = os.environ.get("SEMWATCH_TEST_HOLD")
if HOLD:
    from semwatch.app import service

    _colorize = service.colorize

    def _held(*args, **kwargs):
        while os.path.exists(HOLD):
            time.sleep(0.05)
        return _colorize(*args, **kwargs)

    service.colorize = _held
