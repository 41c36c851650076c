"""Reading captures back with tshark, the way a user's Wireshark would."""
from __future__ import annotations

import shutil
import subprocess

import pytest

FLANNEL = ("-d", "udp.port==8472,vxlan")
VALIDATE = ("-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
            "-o", "tcp.check_checksum:TRUE")
PROBLEMS = ('_ws.malformed || _ws.expert.severity >= "Warning" || ip.checksum.status == "Bad" '
            '|| udp.checksum.status == "Bad" || tcp.checksum.status == "Bad" '
            '|| icmp.checksum.status == "Bad" || tcp.analysis.flags')


def tshark(*args: str) -> str:
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed: `make test` installs it (Debian package tshark)")
    proc = subprocess.run(["tshark", *args], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"tshark {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def fields(path, *names: str, display_filter: str | None = None) -> list[list[str]]:
    """One row per frame: the values of the fields (tshark -T fields)."""
    args = ["-r", str(path), *FLANNEL, "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]
    if display_filter:
        args += ["-Y", display_filter]
    for n in names:
        args += ["-e", n]
    return [line.split("\t") for line in tshark(*args).splitlines()]


def problems(path) -> list[str]:
    """Frames Wireshark flags: malformed, bad checksums, expert warnings or errors."""
    return tshark("-r", str(path), *FLANNEL, *VALIDATE, "-Y", PROBLEMS).splitlines()
