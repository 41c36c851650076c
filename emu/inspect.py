"""`emu inspect`: read a capture back with tshark, the way a user's
Wireshark would, and answer three questions about it.

- `summary(path)`: what each tapped interface saw (frames, bytes, protocols,
  first and last time) and how many frames Wireshark flags (malformed, bad
  checksums with validation on, expert warnings, TCP analysis flags).
- `follow(path, pkt_id)`: one packet across hops, in time order, with the
  decision emu wrote on each frame (`pkt N: <decision>` comments).
- `frames(path, display_filter, interface, limit)`: a plain listing.

tshark is always run with Flannel's VXLAN port decoded (`-d
udp.port==8472,vxlan`; tshark 4.0 knows only 4789), without name
resolution (`-n`: emu is offline and output stays reproducible), as a
subprocess with list arguments (no shell). Results are plain dataclasses;
the CLI renders them.

An emu capture holds the same packet once per hop. Wireshark's
per-conversation analysis assumes one capture point, so across hops it
reports retransmissions that never happened. Hence: problem counts are taken
on each interface's frames alone (split into temporary files, at most
`PARALLEL` tshark processes at a time), and whole-file listings turn TCP
sequence analysis off (reassembly, e.g. HTTP over TCP, still works).

Left out: reading formats other than pcapng and pcap (plain or gzip);
captures tshark reports as cut short are an error, not a partial answer;
interfaces without frames are not listed; listings show absolute TCP
sequence numbers and no TCP analysis flags (use `summary`, or tshark on a
one-interface capture); summaries hold one row per frame in memory (listings
stop reading at `limit`).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from emu.errors import EmuError

FLANNEL_VXLAN = ("-d", "udp.port==8472,vxlan")
NO_NAME_RESOLUTION = ("-n",)
NO_SEQUENCE_ANALYSIS = ("-o", "tcp.analyze_sequence_numbers:FALSE")
VALIDATE_CHECKSUMS = ("-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
                      "-o", "tcp.check_checksum:TRUE")
PARALLEL = 2  # tshark processes at a time: the machines we run on have two cores

EXPERT_WARNING = 0x00600000  # _ws.expert.severity values: Note 0x400000, Warning 0x600000, Error 0x800000
CHECKSUM_BAD = "0"           # *.checksum.status: 0 Bad, 1 Good, 2 Unverified
CHECKSUM_FIELDS = ("ip.checksum.status", "udp.checksum.status", "tcp.checksum.status",
                   "icmp.checksum.status")
PROBLEM_FILTER = ('_ws.malformed || _ws.expert.severity >= "Warning" || tcp.analysis.flags || '
                  + " || ".join(f'{f} == "Bad"' for f in CHECKSUM_FIELDS))
BORING_PROTOCOLS = {"eth", "ethertype"}  # in every frame.protocols of an Ethernet capture

# First bytes of the files we read: pcapng's Section Header Block, classic
# pcap (us and ns, both byte orders), gzip (tshark reads compressed captures).
CAPTURE_MAGICS = (b"\x0a\x0d\x0d\x0a", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4",
                  b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x1f\x8b")
PACKET_COMMENT = re.compile(r"pkt (\d+): ?(.*)", re.DOTALL)
INSTALL_HINT = "install the Debian package tshark (apt-get install tshark) or run `make setup`"


@dataclass(frozen=True)
class Interface:
    """What one tapped interface saw. Times are seconds since the capture's
    first frame. `problem_frames` counts frames with any problem once; the
    other counts overlap (a bad checksum is also an expert error)."""
    name: str
    frames: int
    bytes: int
    protocols: tuple[str, ...]
    first: float
    last: float
    malformed: int = 0
    bad_checksums: int = 0
    expert_warnings: int = 0   # expert info of severity Warning or Error
    tcp_analysis: int = 0      # frames with tcp.analysis.flags
    problem_frames: int = 0


@dataclass(frozen=True)
class Frame:
    """One frame of a listing. For VXLAN frames source, destination and
    info are the inner packet's and `protocol` says so ("TCP in VXLAN").
    `packet` is emu's packet id (None if the frame has none) and `comment`
    the decision, without its `pkt N: ` prefix."""
    number: int
    time: float
    interface: str
    source: str
    destination: str
    protocol: str
    info: str
    packet: int | None
    comment: str


def tshark_command(path) -> list[str]:
    """The command a user runs to see the capture as emu does."""
    return ["tshark", "-r", str(path), *FLANNEL_VXLAN]


# --- public API ---------------------------------------------------------


def summary(path) -> list[Interface]:
    """Per interface (sorted by name): counts, protocols, times, problems."""
    path = _readable_capture(path)
    census = _census(path)
    problems = _problems(path, list(census))
    return sorted((Interface(**census[key], **problems[key]) for key in census), key=lambda i: i.name)


def follow(path, pkt_id: int) -> list[Frame]:
    """Every frame of packet `pkt_id` (comment `pkt {pkt_id}: ...`, or emu's
    epb_packetid option), in capture (time) order."""
    if isinstance(pkt_id, bool) or not isinstance(pkt_id, int) or pkt_id < 0:
        raise EmuError(f"packet id: expected a whole number >= 0, got {pkt_id!r}")
    path = _readable_capture(path)
    hops = _listing(path, f'frame.comment matches "^pkt {pkt_id}:" || frame.packet_id == {pkt_id}')
    if not hops:
        raise EmuError(f"{path}: no frame of packet {pkt_id} (no comment starting 'pkt {pkt_id}:'); "
                       f"list ids with `emu inspect {path} --filter frame.comment`")
    return hops


def frames(path, display_filter: str | None = None, interface: str | None = None,
           limit: int | None = None) -> list[Frame]:
    """Frames matching a Wireshark display filter and/or seen on one
    interface, in capture order; at most `limit` of them."""
    path = _readable_capture(path)
    filters = [f"({display_filter})"] if display_filter else []
    if interface is not None:
        filters.append(f"frame.interface_name == {_quoted(interface)}")
    listed = _listing(path, " && ".join(filters) or None, limit, display_filter)
    if not listed and interface is not None:
        _check_interface(path, interface)
    return listed


# --- reading the file ---------------------------------------------------


def _readable_capture(path) -> Path:
    """The path, if it is a file that starts like a capture; else an EmuError."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise EmuError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise EmuError(f"{path}: is a directory, not a capture") from None
    except OSError as e:
        raise EmuError(f"{path}: cannot read: {e.strerror}") from None
    if not any(head.startswith(m) for m in CAPTURE_MAGICS):
        what = "empty file" if not head else "not a pcapng or pcap capture"
        raise EmuError(f"{path}: {what}")
    return path


def _census(path: Path) -> dict[str, dict]:
    """Per interface key (tshark's interface id): name, frames, bytes,
    protocols, first, last. One pass over the whole file."""
    rows = _fields(path, ("frame.interface_id", "frame.interface_name", "frame.len",
                          "frame.time_relative", "frame.protocols"), NO_SEQUENCE_ANALYSIS)
    census: dict[str, dict] = {}
    for if_id, name, length, time, protocols in rows:
        entry = census.setdefault(if_id, {"name": _interface_name(if_id, name), "frames": 0,
                                          "bytes": 0, "protocols": set(), "first": float(time)})
        entry["frames"] += 1
        entry["bytes"] += int(length)
        entry["protocols"].update(p for p in protocols.split(":") if p not in BORING_PROTOCOLS)
        entry["last"] = float(time)
    for entry in census.values():
        entry["protocols"] = tuple(sorted(entry["protocols"]))
    return census


def _problems(path: Path, keys: list[str]) -> dict[str, dict]:
    """Problem counts per interface key, each interface analysed alone."""
    if len(keys) <= 1:  # nothing to split: one capture point already
        return {key: _count_problems(path) for key in keys}
    with tempfile.TemporaryDirectory(prefix="emu-inspect-") as tmp:
        def one(key: str) -> dict:
            part = Path(tmp) / f"{key}.pcapng"
            _tshark(["-r", str(path), "-Y", f"frame.interface_id == {key}", "-w", str(part)], path)
            return _count_problems(part, about=path)

        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:  # each worker runs one tshark at a time
            return dict(zip(keys, pool.map(one, keys)))


def _count_problems(path: Path, about: Path | None = None) -> dict[str, int]:
    names = ("_ws.malformed", "_ws.expert.severity", "tcp.analysis.flags", *CHECKSUM_FIELDS)
    rows = _fields(path, names, (*VALIDATE_CHECKSUMS, "-Y", PROBLEM_FILTER), about=about)
    counts = dict.fromkeys(("malformed", "bad_checksums", "expert_warnings", "tcp_analysis"), 0)
    for malformed, severities, tcp_flags, *checksums in rows:
        counts["malformed"] += bool(malformed)
        counts["bad_checksums"] += any(CHECKSUM_BAD in c.split(",") for c in checksums)
        counts["expert_warnings"] += any(int(s) >= EXPERT_WARNING for s in severities.split(",") if s)
        counts["tcp_analysis"] += bool(tcp_flags)
    counts["problem_frames"] = len(rows)  # the display filter kept only frames with a problem
    return counts


def _listing(path: Path, display_filter: str | None, limit: int | None = None,
             user_filter: str | None = None) -> list[Frame]:
    names = ("frame.number", "frame.time_relative", "frame.interface_id", "frame.interface_name",
             "_ws.col.Source", "_ws.col.Destination", "_ws.col.Protocol", "_ws.col.Info", "frame.protocols",
             "frame.packet_id", "frame.comment")
    extra = (*NO_SEQUENCE_ANALYSIS, *(("-Y", display_filter) if display_filter else ()))
    rows = _fields(path, names, extra, limit=limit, user_filter=user_filter)
    return [_frame(*row) for row in rows]


def _frame(number, time, if_id, if_name, source, destination, protocol, info, protocols,
           packet_id, comment) -> Frame:
    if "vxlan" in protocols.split(":"):
        protocol = f"{protocol} in VXLAN"
    packet = int(packet_id) if packet_id else None
    tagged = PACKET_COMMENT.fullmatch(comment)
    if tagged:
        packet, comment = int(tagged[1]), tagged[2]
    return Frame(int(number), float(time), _interface_name(if_id, if_name), source, destination, protocol,
                 info.strip(), packet, comment)


def _interface_name(if_id: str, name: str) -> str:
    """The interface's name; classic pcap and unnamed pcapng interfaces get their number."""
    return name or f"interface {if_id or 0}"


def _check_interface(path: Path, interface: str) -> None:
    names = sorted({row[0] for row in _fields(path, ("frame.interface_name",))})
    if interface not in names:
        raise EmuError(f"{path}: no interface {interface!r}; interfaces: {', '.join(names) or 'none'}")


def _quoted(text: str) -> str:
    """A display-filter string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- running tshark -----------------------------------------------------


def _fields(path: Path, names: Iterable[str], extra: Iterable[str] = (), *, limit: int | None = None,
            about: Path | None = None, user_filter: str | None = None) -> list[list[str]]:
    """One row per frame: the fields' values (several occurrences joined by
    commas). tshark escapes tabs and newlines inside values, so rows split
    cleanly."""
    args = ["-r", str(path), *FLANNEL_VXLAN, *NO_NAME_RESOLUTION, *extra,
            "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]
    for n in names:
        args += ["-e", n]
    return [line.split("\t") for line in _tshark(args, about or path, limit, user_filter)]


def _tshark(args: list[str], about: Path, limit: int | None = None,
            user_filter: str | None = None) -> list[str]:
    """tshark's output lines (the first `limit` of them); a failure becomes an
    EmuError naming the capture. Stops tshark early once `limit` lines are read."""
    exe = shutil.which("tshark")
    if exe is None:
        raise EmuError(f"{about}: cannot read it, tshark is not installed: {INSTALL_HINT}")
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a chatty stderr cannot block tshark
        proc = subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=errors, text=True)
        lines = list(_take(proc.stdout, limit))
        stopped_early = proc.poll() is None and limit is not None and len(lines) == limit
        if stopped_early:
            proc.terminate()
        proc.stdout.close()
        returncode = proc.wait()
        if returncode != 0 and not stopped_early:
            errors.seek(0)
            raise _tshark_error(about, errors.read().decode(errors="replace"), returncode, user_filter)
    return lines


def _take(stream, limit: int | None) -> Iterator[str]:
    for i, line in enumerate(stream):
        if limit is not None and i >= limit:
            return
        yield line.rstrip("\n")


def _tshark_error(about: Path, stderr: str, returncode: int, user_filter: str | None) -> EmuError:
    # tshark warns on stderr when run as root; that line is never the error
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("Running as user")]
    message = lines[0].removeprefix("tshark: ") if lines else f"tshark exited with status {returncode}"
    if user_filter is not None and "The file" not in message:  # tshark's file errors say 'The file "X" ...'
        return EmuError(f"{about}: display filter {user_filter!r}: {message}")
    if str(about) in message:
        return EmuError(f"tshark: {message}")
    return EmuError(f"{about}: tshark could not read it: {message}")
