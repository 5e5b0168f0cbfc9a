"""systemd/semwatch.service: systemd's own verifier accepts it, and it says what we promise."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cannot_run

from semwatch.config import DaemonConfig

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "semwatch.service"
DROP_IN = REPO / "systemd" / "site.conf.example"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values in order (systemd keys may repeat; "" resets a list)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[(.+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        assert current is not None, f"assignment outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert match and match.group(2) in units, f"unparsed time span {value!r}"
    return float(match.group(1)) * units[match.group(2)]


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def test_service_directives(unit) -> None:
    service, section = unit["Service"], unit["Unit"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Type"] == "notify"
    assert _seconds(one["WatchdogSec"]) > 0
    assert one["Restart"] == "on-failure"
    assert one["User"] not in ("", "root")
    assert one["ProtectSystem"] == "strict"
    assert one["NoNewPrivileges"] == "yes"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert re.search(r"/semwatch run --config \S+", one["ExecStart"])
    # systemd must never SIGKILL a clean drain.
    assert _seconds(one["TimeoutStopSec"]) > DaemonConfig().shutdown_timeout
    # A configuration error (exit 78) is not fixed by restarting.
    assert "78" in one["RestartPreventExitStatus"].split()
    # Output and state folders writable, everything else read-only.
    writable = " ".join(service["ReadWritePaths"]).split()
    assert "/var/lib/semwatch" in writable and "/srv/sem/colorized" in writable
    # GPU device nodes reachable despite the device policy; PrivateDevices would hide them.
    assert any("nvidia" in v for v in service["DeviceAllow"])
    assert service.get("PrivateDevices", ["no"])[-1] == "no"
    # The export share must be mounted before we start (and we stop when it goes).
    mounts = " ".join(section["RequiresMountsFor"]).split()
    assert "/srv/sem/export" in mounts and "/srv/sem/colorized" in mounts
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_drop_in_example_parses_and_keeps_the_stop_timeout_above_the_default(unit) -> None:
    drop_in = parse_unit(DROP_IN.read_text())
    # Lists are reset before being replaced, not appended to.
    assert drop_in["Unit"]["RequiresMountsFor"][0] == ""
    assert drop_in["Service"]["ReadWritePaths"][0] == ""
    assert _seconds(drop_in["Service"]["TimeoutStopSec"][-1]) > DaemonConfig().shutdown_timeout


def test_systemd_analyze_verify_accepts_the_unit_and_drop_in(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        cannot_run("systemd-analyze not installed (Debian: systemd)")
    # verify checks that ExecStart's program exists; this host has no /opt/semwatch, so a
    # copy points at an executable that does. Everything else is verified as shipped.
    text = UNIT.read_text()
    assert text.count("ExecStart=") == 1
    copy = re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable}", text, flags=re.M)
    (tmp_path / "semwatch.service").write_text(copy)
    drop_in_dir = tmp_path / "semwatch.service.d"
    drop_in_dir.mkdir()
    shutil.copy(DROP_IN, drop_in_dir / "site.conf")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "semwatch.service")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    ours = [line for line in result.stderr.splitlines() if "semwatch" in line or "site.conf" in line]
    assert result.returncode == 0, result.stderr
    # Unknown keys and unparsable values are only warnings to systemd; not to us.
    assert not ours, "\n".join(ours)
