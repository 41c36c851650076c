"""Reading captures back with tshark, the way a user's Wireshark would."""
from __future__ import annotations

import shutil
import subprocess
import tempfile

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


def one_interface(path, name: str, out) -> str:
    """The frames of one interface in a file of their own (`out`): what
    tcpdump on that interface would have captured, for Wireshark's
    per-conversation analysis and reassembly (HTTP over TCP, DNS over TCP)."""
    tshark("-r", str(path), "-Y", f'frame.interface_name == "{name}"', "-w", str(out))
    return str(out)


def _parallel(commands: list[list[str]]) -> list[str]:
    """Run tshark commands two at a time (the machine has two cores); their outputs."""
    outs = []
    for i in range(0, len(commands), 2):
        procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in commands[i:i + 2]]
        for c, proc in zip(commands[i:i + 2], procs):
            out, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise AssertionError(f"{' '.join(c)} failed:\n{err}")
            outs.append(out)
    return outs


def problems(path) -> list[str]:
    """Frames Wireshark flags: malformed, bad checksums, expert warnings or
    errors, TCP analysis flags. Each interface is analysed in a file of its
    own, because Wireshark's per-conversation analysis assumes one capture
    point: the same DNS query or TCP segment seen at five hops is not five
    retransmissions."""
    names = sorted({row[0] for row in fields(path, "frame.interface_name")})
    with tempfile.TemporaryDirectory() as tmp:
        parts = [f"{tmp}/{i}.pcapng" for i in range(len(names))]
        _parallel([["tshark", "-r", str(path), "-Y", f'frame.interface_name == "{n}"', "-w", part]
                   for n, part in zip(names, parts)])
        outs = _parallel([["tshark", "-r", part, *FLANNEL, *VALIDATE, "-Y", PROBLEMS] for part in parts])
    return [f"{name}: {line}" for name, out in zip(names, outs) for line in out.splitlines()]
