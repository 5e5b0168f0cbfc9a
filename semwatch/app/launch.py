"""`semwatch app`: start the web UI (Streamlit) on this machine.

No Streamlit import at module level: the CLI stays quick, and a machine without the `app`
extra gets a one-line message instead of a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from semwatch.app import APP_SCRIPT
from semwatch.cli_options import CONTEXT, config_option, load_cli_config
from semwatch.config import ENV_VAR, Config


def streamlit_argv(config: Config, *, host: str, port: int) -> list[str]:
    """The `python -m streamlit run` command line for our app script."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_SCRIPT),
        f"--server.address={host}",
        f"--server.port={port}",
        "--server.headless=true",  # no browser opened on the server, no e-mail prompt
        "--browser.gatherUsageStats=false",  # nothing leaves the machine
        f"--server.maxUploadSize={config.app.max_upload_mb}",
        "--server.fileWatcherType=none",  # a service, not a development session
        "--server.runOnSave=false",
        "--client.toolbarMode=minimal",
    ]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("app", context_settings=CONTEXT)
@click.option(
    "--host",
    default=None,
    help="Address to listen on. Default: app.host (127.0.0.1, this machine only). "
    "The page has no login: another address lets everyone who reaches it in.",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="TCP port. Default: app.port (8501)."
)
@config_option
def app_command(host: str | None, port: int | None, config_path: Path | None) -> None:
    """Start the web UI: colorize uploads with colour hints, watch the service's queue.

    \b
    Colorize page: upload an image, compare gray and colour with a slider, click points
    to steer the colour, download TIFF (metadata + provenance) or PNG.
    Queue page: the service's queue read-only (counts, throughput, recent jobs, failures),
    retry failed jobs, refine a finished job into <name>.refined.tif beside its output.
    Uses the service's configuration: model, engine settings, database, folders.
    """
    config = load_cli_config(config_path)
    try:
        import streamlit  # noqa: F401 - only checks that the app extra is installed
    except ImportError:
        raise click.ClickException("the web UI needs Streamlit: pip install 'semwatch[app]'") from None
    host = host or config.app.host
    port = port or config.app.port
    argv = streamlit_argv(config, host=host, port=port)
    env = dict(os.environ)
    if config.source is not None:
        # The app script loads the same file (load_config looks at $SEMWATCH_CONFIG).
        env[ENV_VAR] = str(Path(config.source).absolute())
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"semwatch web UI on http://{shown}:{port}/ (Ctrl-C stops it)", err=True)
    if not is_loopback(host):
        click.echo(
            f"warning: listening on {host}: the page has no login; everyone who reaches "
            "this port can colorize, see the queue's images and retry jobs",
            err=True,
        )
    _exec(argv, env)


def _exec(argv: Sequence[str], env: dict[str, str]) -> None:
    # exec, not a child process: systemd and Ctrl-C signal Streamlit directly, and the PID
    # that started is the server.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], list(argv), env)
