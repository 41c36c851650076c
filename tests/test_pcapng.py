"""emu.capture writers and kernels.pcapng: the batch kernel, the single-frame
path and the plain-struct reference give the same bytes; Scapy and tshark
read the files back as meant; bad input is a ValueError that writes nothing."""
from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import emu
from emu.capture import PcapngWriter, PcapWriter
from kernels import pcapng as kernel
from tests.reference import pcapng as ref
from tests.util import run_with_boundscheck

MAX_TS = 2**63 - 1
MAX_ID = 2**63 - 1
USERAPPL = f"emu {emu.__version__}"


@dataclass
class Batch:
    """A capture in both shapes: columns for write_batch, and what the reference needs."""
    names: list[str]
    descriptions: list[str | None]
    snaplens: list[int]
    buf: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    if_ids: np.ndarray
    ts_ns: np.ndarray
    packet_ids: np.ndarray | None
    comment_ids: np.ndarray | None
    comments: list[str]

    def frame(self, i: int) -> bytes:
        return self.buf[self.starts[i]:self.starts[i] + self.lengths[i]].tobytes()

    def comment(self, i: int) -> str | None:
        if self.comment_ids is None or self.comment_ids[i] < 0:
            return None
        return self.comments[self.comment_ids[i]]

    def packet_id(self, i: int) -> int | None:
        return None if self.packet_ids is None else int(self.packet_ids[i])

    def __len__(self) -> int:
        return len(self.starts)


def make_batch(rng: np.random.Generator, sizes, n_if: int, ts_ns, *, snaplens=None, names=None,
               descriptions=None, packet_ids=None, comments=(), comment_ids=None,
               frame=None) -> Batch:
    """Frames of the given sizes at random places in one buffer (random gaps,
    like pool headroom), random bytes unless `frame(i, size)` makes them."""
    n = len(sizes)
    gaps = rng.integers(0, 200, n + 1)
    starts = np.zeros(n, np.int64)
    pos = int(gaps[0])
    for i, size in enumerate(sizes):
        starts[i] = pos
        pos += int(size) + int(gaps[i + 1])
    buf = rng.integers(0, 256, pos, dtype=np.uint8)
    if frame is not None:
        for i, size in enumerate(sizes):
            buf[starts[i]:starts[i] + size] = np.frombuffer(frame(i, int(size)), np.uint8)
    return Batch(
        names=names or [f"node-{k}/veth{k}" for k in range(n_if)],
        descriptions=descriptions or [None] * n_if,
        snaplens=snaplens or [kernel.MAX_SNAPLEN] * n_if,
        buf=buf, starts=starts, lengths=np.asarray(sizes, np.int64).reshape(n),
        if_ids=rng.integers(0, n_if, n).astype(np.int32),
        ts_ns=np.asarray(ts_ns, np.int64).reshape(n),
        packet_ids=None if packet_ids is None else np.asarray(packet_ids, np.int64).reshape(n),
        comment_ids=None if comment_ids is None else np.asarray(comment_ids, np.int32).reshape(n),
        comments=list(comments),
    )


@st.composite
def batches(draw, max_frames: int = 24) -> Batch:
    n_if = draw(st.integers(1, 4))
    snaplens = draw(st.lists(st.sampled_from([1, 3, 14, 64, 1500, kernel.MAX_SNAPLEN])
                             | st.integers(1, kernel.MAX_SNAPLEN), min_size=n_if, max_size=n_if))
    names = draw(st.lists(st.text(max_size=20), min_size=n_if, max_size=n_if))
    descriptions = draw(st.lists(st.none() | st.text(max_size=30), min_size=n_if, max_size=n_if))
    n = draw(st.integers(0, max_frames))
    sizes = draw(st.lists(st.integers(0, 70) | st.integers(0, 9000), min_size=n, max_size=n))
    ts_ns = draw(st.lists(st.integers(0, 10**12) | st.integers(0, MAX_TS), min_size=n, max_size=n))
    packet_ids = draw(st.none() | st.lists(st.integers(0, 10**6) | st.just(MAX_ID), min_size=n, max_size=n))
    comments = draw(st.lists(st.text(max_size=40), max_size=4))
    comment_ids = draw(st.none() | st.lists(st.integers(-1, len(comments) - 1), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**32 - 1))
    return make_batch(np.random.default_rng(seed), sizes, n_if, ts_ns, snaplens=snaplens,
                      names=names, descriptions=descriptions, packet_ids=packet_ids,
                      comments=comments, comment_ids=comment_ids)


# --- the three writers ------------------------------------------------------

def reference_epbs(b: Batch) -> bytes:
    out = b""
    for i in range(len(b)):
        if_id = int(b.if_ids[i])
        out += ref.packet(if_id, int(b.ts_ns[i]), b.frame(i), b.snaplens[if_id], b.comment(i),
                          b.packet_id(i))
    return out


def reference_pcapng(b: Batch, section_comment: str | None = None) -> bytes:
    out = ref.section_header(USERAPPL, section_comment)
    for name, description, snaplen in zip(b.names, b.descriptions, b.snaplens):
        out += ref.interface(name, description, snaplen)
    return out + reference_epbs(b)


def _with_interfaces(b: Batch, file, section_comment=None) -> PcapngWriter:
    w = PcapngWriter(file, comment=section_comment)
    for k, (name, description, snaplen) in enumerate(zip(b.names, b.descriptions, b.snaplens)):
        assert w.add_interface(name, description, snaplen) == k
    return w


def single_pcapng(b: Batch) -> bytes:
    f = io.BytesIO()
    with _with_interfaces(b, f) as w:
        for i in range(len(b)):
            w.write(int(b.if_ids[i]), int(b.ts_ns[i]), b.frame(i), b.comment(i), b.packet_id(i))
    return f.getvalue()


def batch_pcapng(b: Batch, pieces: int = 1) -> bytes:
    """The batch through write_batch, cut into `pieces` consecutive calls."""
    f = io.BytesIO()
    with _with_interfaces(b, f) as w:
        for part in np.array_split(np.arange(len(b)), pieces):
            pick = slice(part[0], part[-1] + 1) if len(part) else slice(0, 0)
            w.write_batch(b.buf, b.starts[pick], b.lengths[pick], b.if_ids[pick], b.ts_ns[pick],
                          None if b.packet_ids is None else b.packet_ids[pick],
                          None if b.comment_ids is None else b.comment_ids[pick], b.comments)
    return f.getvalue()


@settings(max_examples=200)
@given(batches())
def test_batch_single_and_reference_write_the_same_bytes(b):
    expected = reference_pcapng(b)
    assert single_pcapng(b) == expected
    assert batch_pcapng(b) == expected
    assert batch_pcapng(b, pieces=3) == expected


def _walk_blocks(chunk: np.ndarray) -> int:
    """Number of whole EPBs in a chunk (fails if the chunk is not whole blocks)."""
    data, pos, count = chunk.tobytes(), 0, 0
    while pos < len(data):
        assert int.from_bytes(data[pos:pos + 4], "little") == kernel.EPB_TYPE
        pos += int.from_bytes(data[pos + 4:pos + 8], "little")
        count += 1
    assert pos == len(data)
    return count


@settings(max_examples=50)
@given(batches(max_frames=60))
def test_smallest_scratch_cuts_chunks_at_block_boundaries(b):
    comment_utf8, comment_offsets = _comment_table(b.comments)
    chunks = kernel.epb_chunks(b.buf, b.starts, b.lengths, b.if_ids, b.ts_ns,
                               np.array(b.snaplens, np.int64), b.packet_ids, b.comment_ids,
                               comment_utf8, comment_offsets,
                               np.empty(kernel.MAX_EPB_BYTES, np.uint8))
    data, blocks = b"", 0
    for chunk in chunks:
        assert len(chunk) > 0
        blocks += _walk_blocks(chunk)
        data += chunk.tobytes()
    assert blocks == len(b)
    assert data == reference_epbs(b)


def _comment_table(comments):
    encoded = [c.encode() for c in comments]
    offsets = np.cumsum([0] + [len(e) for e in encoded]).astype(np.int64)
    return np.frombuffer(b"".join(encoded), np.uint8), offsets


def test_extremes_are_written_as_the_reference_does():
    rng = np.random.default_rng(7)
    longest = "x" * kernel.MAX_COMMENT_BYTES  # with the largest id: a 65535-byte option
    b = make_batch(rng, [0, 1, 2, 3, 4, 5, 9000, kernel.MAX_SNAPLEN + 5], 2, [0, 1, MAX_TS] + [7] * 5,
                   snaplens=[1, kernel.MAX_SNAPLEN], packet_ids=[MAX_ID, 0, 9, 10, 99, 100, MAX_ID, 5],
                   comments=["", longest, "é"], comment_ids=[1, 0, 2, -1, 1, 0, 1, 2])
    expected = reference_pcapng(b, "seed 1")
    f = io.BytesIO()
    with _with_interfaces(b, f, "seed 1") as w:
        w.write_batch(b.buf, b.starts, b.lengths, b.if_ids, b.ts_ns, b.packet_ids, b.comment_ids,
                      b.comments)
    assert f.getvalue() == expected


def test_an_empty_batch_writes_nothing():
    f = io.BytesIO()
    with PcapngWriter(f) as w:
        w.add_interface("a")
        before = f.getvalue()
        w.write_batch(np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64),
                      np.zeros(0, np.int32), np.zeros(0, np.int64))
        assert f.getvalue() == before


def test_path_and_file_object_give_the_same_bytes(tmp_path):
    b = make_batch(np.random.default_rng(1), [60, 61, 62], 2, [1, 2, 3], packet_ids=[1, 2, 3])
    path = tmp_path / "run.pcapng"
    with _with_interfaces(b, path) as w:
        w.write_batch(b.buf, b.starts, b.lengths, b.if_ids, b.ts_ns, b.packet_ids)
    assert w.closed
    assert path.read_bytes() == batch_pcapng(b) == reference_pcapng(b)
    f = io.BytesIO()
    _with_interfaces(b, f).close()
    assert not f.closed  # a caller's file object stays open


def test_interfaces_may_be_added_after_packets():
    f = io.BytesIO()
    with PcapngWriter(f) as w:
        w.write(w.add_interface("node-1/cni0"), 1, bytes(60), "first")
        late = w.add_interface("node-2/cni0", "added later", snaplen=100)
        w.write(late, 2, bytes(200), "second", 5)
        assert w.interfaces == ("node-1/cni0", "node-2/cni0")
    expected = (ref.section_header(USERAPPL) + ref.interface("node-1/cni0", None, kernel.MAX_SNAPLEN)
                + ref.packet(0, 1, bytes(60), kernel.MAX_SNAPLEN, "first")
                + ref.interface("node-2/cni0", "added later", 100)
                + ref.packet(1, 2, bytes(200), 100, "second", 5))
    assert f.getvalue() == expected


def test_write_takes_any_contiguous_bytes():
    frame = bytes(range(70))
    outs = []
    for kind in (bytes, bytearray, memoryview, lambda x: np.frombuffer(x, np.uint8)):
        f = io.BytesIO()
        with PcapngWriter(f) as w:
            w.write(w.add_interface("a"), np.int64(3), kind(frame), packet_id=np.int64(4))
        outs.append(f.getvalue())
    assert len(set(outs)) == 1


# --- classic pcap -----------------------------------------------------------

def reference_pcap(b: Batch, snaplen: int) -> bytes:
    return ref.pcap_header(snaplen) + b"".join(
        ref.pcap_record(int(b.ts_ns[i]), b.frame(i), snaplen) for i in range(len(b)))


@settings(max_examples=100)
@given(batches(), st.sampled_from([1, 14, 100, kernel.MAX_SNAPLEN]), st.data())
def test_pcap_batch_single_and_reference_write_the_same_bytes(b, snaplen, data):
    ts = np.array(data.draw(st.lists(st.integers(0, kernel.MAX_PCAP_TS_NS), min_size=len(b),
                                     max_size=len(b))), np.int64).reshape(len(b))
    b.ts_ns = ts
    one, many = io.BytesIO(), io.BytesIO()
    with PcapWriter(one, snaplen) as w:
        for i in range(len(b)):
            w.write(int(ts[i]), b.frame(i))
    with PcapWriter(many, snaplen) as w:
        w.write_batch(b.buf, b.starts, b.lengths, ts)
    assert one.getvalue() == many.getvalue() == reference_pcap(b, snaplen)


# --- read back by Scapy and tshark ------------------------------------------

COMMENTS = ["bridge forward cni0 -> veth1a2b", "drop: BAD_IP_CHECKSUM",
            "DNAT 10.96.0.10:53 -> 10.244.1.3:53 via KUBE-SEP-ÄÖ ✓"]
DST, SRC = bytes.fromhex("0a580af40103"), bytes.fromhex("0a580af40102")


def ethernet(i: int, size: int) -> bytes:
    """A well-formed Ethernet frame of `size` >= 14 bytes: unicast source and
    the IEEE local experimental EtherType, so Wireshark shows the payload as data."""
    return DST + SRC + b"\x88\xb5" + bytes((i + k) & 0xFF for k in range(size - 14))


def readable_batch(n: int = 300) -> Batch:
    rng = np.random.default_rng(2024)
    sizes = rng.integers(14, 9001, n)
    sizes[:4] = [14, 15, 60, 1514]
    ts = np.sort(rng.integers(0, 10**13, n))
    return make_batch(rng, sizes, 3, ts, snaplens=[kernel.MAX_SNAPLEN, 1514, 128],
                      names=["node-1/cni0", "node-1/flannel.1", "node-2/veth1a2b ✓"],
                      descriptions=["bridge", None, "pod eth0 peer"],
                      packet_ids=np.arange(n) * 3 + 1, comments=COMMENTS,
                      comment_ids=rng.integers(-1, len(COMMENTS), n), frame=ethernet)


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    b = readable_batch()
    path = tmp_path_factory.mktemp("pcapng") / "run.pcapng"
    with _with_interfaces(b, path, "scenario: readback") as w:
        w.write_batch(b.buf, b.starts, b.lengths, b.if_ids, b.ts_ns, b.packet_ids, b.comment_ids,
                      b.comments)
    return b, path


def expected_comment(b: Batch, i: int) -> str | None:
    c = b.comment(i)
    return None if c is None else f"pkt {b.packet_id(i)}: {c}"


def test_scapy_reads_frames_times_comments_and_interfaces(capture):
    from scapy.utils import PcapNgReader

    b, path = capture
    with PcapNgReader(str(path)) as reader:
        packets = list(reader)
    assert len(packets) == len(b)
    for i, p in enumerate(packets):
        if_id = int(b.if_ids[i])
        assert bytes(p) == b.frame(i)[: b.snaplens[if_id]]
        assert p.wirelen == b.lengths[i]
        assert p.time * 10**9 == int(b.ts_ns[i])
        assert p.sniffed_on == b.names[if_id]
        want = expected_comment(b, i)
        assert p.comments == (None if want is None else [want.encode()])


def _tshark(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed: `make test` installs it (Debian package tshark)")
    return subprocess.run(["tshark", *args], capture_output=True, text=True, timeout=120)


def _no_errors(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr
    noise = [line for line in proc.stderr.splitlines() if line and "Running as user" not in line]
    assert noise == []


def test_tshark_reads_interfaces_comments_ids_and_ns_times(capture):
    b, path = capture
    proc = _tshark("-r", str(path), "-T", "fields", "-E", "separator=/t", "-E", "quote=n",
                   "-e", "frame.interface_id", "-e", "frame.interface_name", "-e", "frame.comment",
                   "-e", "frame.packet_id", "-e", "frame.time_epoch", "-e", "frame.len",
                   "-e", "frame.cap_len")
    _no_errors(proc)
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert len(rows) == len(b)
    for i, (if_id, name, comment, packet_id, epoch, length, cap_len) in enumerate(rows):
        want_if = int(b.if_ids[i])
        assert (int(if_id), name) == (want_if, b.names[want_if])
        assert comment == (expected_comment(b, i) or "")
        assert int(packet_id) == b.packet_id(i)
        assert Decimal(epoch) * 10**9 == int(b.ts_ns[i])
        assert int(length) == b.lengths[i]
        assert int(cap_len) == min(b.lengths[i], b.snaplens[want_if])


def test_tshark_finds_nothing_malformed(capture):
    _, path = capture
    proc = _tshark("-r", str(path), "-Y", "_ws.malformed || _ws.expert.severity == error")
    _no_errors(proc)
    assert proc.stdout.strip() == ""


def test_capinfos_reads_the_section_and_interfaces(capture):
    b, path = capture
    if shutil.which("capinfos") is None:
        pytest.fail("capinfos is not installed: `make test` installs it with tshark")
    proc = subprocess.run(["capinfos", "-M", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"Number of packets:   {len(b)}" in out
    assert f"Capture application: {USERAPPL}" in out
    assert "Capture comment:     scenario: readback" in out
    assert "File timestamp precision:  nanoseconds (9)" in out
    for k, name in enumerate(b.names):
        assert f"Interface #{k} info:\n                     Name = {name}" in out


def test_tshark_counts_tiny_and_empty_frames(tmp_path):
    b = make_batch(np.random.default_rng(3), [0, 1, 2, 3, 13], 1, [1, 2, 3, 4, 5])
    path = tmp_path / "tiny.pcapng"
    with _with_interfaces(b, path) as w:
        w.write_batch(b.buf, b.starts, b.lengths, b.if_ids, b.ts_ns)
    proc = _tshark("-r", str(path), "-T", "fields", "-e", "frame.len", "-e", "frame.time_epoch")
    _no_errors(proc)
    assert [line.split("\t")[0] for line in proc.stdout.splitlines()] == ["0", "1", "2", "3", "13"]


@pytest.fixture(scope="module")
def classic_capture(tmp_path_factory):
    b = readable_batch(100)
    path = tmp_path_factory.mktemp("pcap") / "cni0.pcap"
    with PcapWriter(path, snaplen=1514) as w:
        w.write_batch(b.buf, b.starts, b.lengths, b.ts_ns)
    return b, path


def test_scapy_reads_classic_pcap(classic_capture):
    from scapy.utils import rdpcap

    b, path = classic_capture
    packets = rdpcap(str(path))
    assert len(packets) == len(b)
    for i, p in enumerate(packets):
        assert bytes(p) == b.frame(i)[:1514]
        assert p.wirelen == b.lengths[i]
        assert p.time * 10**9 == int(b.ts_ns[i])


def test_tshark_reads_classic_pcap(classic_capture):
    b, path = classic_capture
    proc = _tshark("-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len",
                   "-e", "frame.cap_len")
    _no_errors(proc)
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert len(rows) == len(b)
    for i, (epoch, length, cap_len) in enumerate(rows):
        assert Decimal(epoch) * 10**9 == int(b.ts_ns[i])
        assert (int(length), int(cap_len)) == (b.lengths[i], min(b.lengths[i], 1514))
    malformed = _tshark("-r", str(path), "-Y", "_ws.malformed || _ws.expert.severity == error")
    _no_errors(malformed)
    assert malformed.stdout.strip() == ""


# --- validation -------------------------------------------------------------

def _good(n_if: int = 2):
    b = make_batch(np.random.default_rng(5), [60, 70, 80], n_if, [1, 2, 3], packet_ids=[1, 2, 3],
                   comments=["a", "b"], comment_ids=[0, -1, 1])
    return dict(buf=b.buf, starts=b.starts, lengths=b.lengths, if_ids=b.if_ids, ts_ns=b.ts_ns,
                packet_ids=b.packet_ids, comment_ids=b.comment_ids, comments=b.comments)


def _changed(name, index, value, **kw):
    args = _good(**kw)
    args[name] = args[name].copy()
    args[name][index] = value
    return args


BAD_BATCHES = [
    ("unknown if_id", _changed("if_ids", 1, 2), r"if_ids\[1\]: 2 is not an interface"),
    ("negative if_id", _changed("if_ids", 0, -1), r"if_ids\[0\]"),
    ("frame past buf", _changed("lengths", 2, 10**6), r"frame 2: .* outside buf"),
    ("negative start", _changed("starts", 0, -1), r"frame 0: .* outside buf"),
    ("negative length", _changed("lengths", 1, -5), r"lengths\[1\]: -5"),
    ("length beyond u32", _changed("lengths", 1, 2**32), r"lengths\[1\]"),
    ("negative timestamp", _changed("ts_ns", 2, -1), r"ts_ns\[2\]: -1 is negative"),
    ("comment id too big", _changed("comment_ids", 0, 2), r"comment_ids\[0\]: 2 is neither"),
    ("comment id below -1", _changed("comment_ids", 0, -2), r"comment_ids\[0\]: -2"),
    ("negative packet id", _changed("packet_ids", 1, -1), r"packet_ids\[1\]: -1 is negative"),
    ("int32 starts", {**_good(), "starts": np.array([0, 1, 2], np.int32)}, r"starts: expected dtype int64"),
    ("int64 if_ids", {**_good(), "if_ids": np.zeros(3, np.int64)}, r"if_ids: expected dtype int32"),
    ("list buf", {**_good(), "buf": [1, 2, 3]}, r"buf: expected a numpy array"),
    ("2-D buf", {**_good(), "buf": np.zeros((2, 2), np.uint8)}, r"buf: expected 1 dimension"),
    ("short ts column", {**_good(), "ts_ns": np.zeros(2, np.int64)}, r"same length"),
    ("comment not a str", {**_good(), "comments": ["a", 5]}, r"comments\[1\]: expected a str"),
    ("comments as one str", {**_good(), "comments": "ab"}, r"comments: expected a sequence"),
    ("comment too long", {**_good(), "comments": ["a", "é" * 40000]}, r"comments\[1\]: 80000 bytes"),
]


@pytest.mark.parametrize("args, match", [c[1:] for c in BAD_BATCHES], ids=[c[0] for c in BAD_BATCHES])
def test_bad_batches_raise_and_write_nothing(args, match):
    f = io.BytesIO()
    with PcapngWriter(f) as w:
        w.add_interface("a")
        w.add_interface("b")
        before = f.getvalue()
        with pytest.raises(ValueError, match=match):
            w.write_batch(**args)
        assert f.getvalue() == before


BAD_FRAMES = [
    ("unknown if_id", dict(if_id=1), r"if_id: 1 is not an interface"),
    ("bool if_id", dict(if_id=True), r"if_id"),
    ("negative timestamp", dict(ts_ns=-1), r"ts_ns: must be in"),
    ("float timestamp", dict(ts_ns=1.0), r"ts_ns: expected an integer"),
    ("timestamp beyond int64", dict(ts_ns=2**63), r"ts_ns"),
    ("negative packet id", dict(packet_id=-3), r"packet_id: must be in"),
    ("frame not bytes", dict(frame="text"), r"frame: expected bytes-like"),
    ("frame of int64", dict(frame=np.zeros(3, np.int64)), r"frame: expected contiguous bytes"),
    ("comment not a str", dict(comment=b"bytes"), r"comment: expected a str"),
    ("comment too long", dict(comment="x" * (kernel.MAX_COMMENT_BYTES + 1)), r"comment: \d+ bytes"),
    ("lone surrogate", dict(comment="\ud800"), r"comment: not encodable"),
]


@pytest.mark.parametrize("change, match", [c[1:] for c in BAD_FRAMES], ids=[c[0] for c in BAD_FRAMES])
def test_bad_frames_raise_and_write_nothing(change, match):
    f = io.BytesIO()
    with PcapngWriter(f) as w:
        w.add_interface("a")
        before = f.getvalue()
        with pytest.raises(ValueError, match=match):
            w.write(**{**dict(if_id=0, ts_ns=1, frame=bytes(60), comment="c", packet_id=1), **change})
        assert f.getvalue() == before


def test_bad_interfaces_and_sections():
    f = io.BytesIO()
    with pytest.raises(ValueError, match="comment: expected a str"):
        PcapngWriter(f, comment=3)
    with pytest.raises(ValueError, match="file: expected a path"):
        PcapngWriter(42)
    with PcapngWriter(f) as w:
        with pytest.raises(ValueError, match="if_id: 0 is not an interface"):
            w.write(0, 1, bytes(60))
        for kw, match in [(dict(snaplen=0), "snaplen"), (dict(snaplen=kernel.MAX_SNAPLEN + 1), "snaplen"),
                          (dict(name=None), "name: expected a str"),
                          (dict(description=7), "description: expected a str"),
                          (dict(name="x" * 70000), "name: 70000 bytes")]:
            with pytest.raises(ValueError, match=match):
                w.add_interface(**{"name": "a", **kw})
        assert w.interfaces == ()


def test_closed_writers_refuse_frames():
    w = PcapngWriter(io.BytesIO())
    if_id = w.add_interface("a")
    w.close()
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.write(if_id, 1, bytes(60))
    with pytest.raises(ValueError, match="closed"):
        w.write_batch(**{**_good(1), "comment_ids": None, "packet_ids": None})
    p = PcapWriter(io.BytesIO())
    p.close()
    with pytest.raises(ValueError, match="closed"):
        p.write(1, bytes(60))


def test_bad_pcap_input():
    args = _good()
    with PcapWriter(io.BytesIO()) as w:
        with pytest.raises(ValueError, match=r"ts_ns: must be in"):
            w.write(kernel.MAX_PCAP_TS_NS + 1, bytes(60))
        with pytest.raises(ValueError, match=r"ts_ns\[1\]: .* 32-bit"):
            w.write_batch(args["buf"], args["starts"], args["lengths"],
                          np.array([0, kernel.MAX_PCAP_TS_NS + 1, 0], np.int64))
        with pytest.raises(ValueError, match=r"frame 0"):
            w.write_batch(args["buf"], args["starts"] + 10**6, args["lengths"], args["ts_ns"])
    with pytest.raises(ValueError, match="snaplen"):
        PcapWriter(io.BytesIO(), snaplen=0)


def test_kernel_rejects_bad_tables_and_scratch():
    args = _good()
    utf8, offsets = _comment_table(args["comments"])
    call = dict(buf=args["buf"], starts=args["starts"], lengths=args["lengths"], if_ids=args["if_ids"],
                ts_ns=args["ts_ns"], snaplens=np.array([64, 64], np.int64), packet_ids=None,
                comment_ids=args["comment_ids"], comment_utf8=utf8, comment_offsets=offsets)
    for change, match in [
        (dict(comment_offsets=np.array([0, 3, 2], np.int64)), "non-decreasing"),
        (dict(comment_offsets=np.array([1, 2], np.int64)), "start at 0"),
        (dict(comment_offsets=np.zeros(0, np.int64)), "start at 0"),
        (dict(snaplens=np.array([0, 64], np.int64)), "snaplens"),
        (dict(scratch=np.zeros(100, np.uint8)), "scratch: needs at least"),
    ]:
        with pytest.raises(ValueError, match=match):
            kernel.epb_chunks(**{**call, **change})


def test_arrays_changed_between_chunks_stop_the_layout():
    b = make_batch(np.random.default_rng(9), [9000] * 100, 1, np.arange(100))
    scratch = np.empty(kernel.MAX_EPB_BYTES, np.uint8)
    chunks = kernel.epb_chunks(b.buf, b.starts, b.lengths, b.if_ids, b.ts_ns,
                               np.array(b.snaplens, np.int64), None, None, *_comment_table([]), scratch)
    next(chunks)
    b.starts[-1] = len(b.buf)  # the last frame now ends past buf
    with pytest.raises(ValueError, match="frame 99 changed after its batch was checked"):
        list(chunks)
    records = kernel.pcap_record_chunks(b.buf, b.starts[:-1], b.lengths[:-1], b.ts_ns[:-1], 9000,
                                        scratch)
    next(records)
    b.ts_ns[-2] = -1
    with pytest.raises(ValueError, match="frame 98 changed"):
        list(records)


# --- fuzz: no out-of-bounds access on any input -----------------------------

def test_fuzz_kernels_with_boundscheck():
    out = run_with_boundscheck("""
        import numpy as np
        from kernels import pcapng as k

        rng = np.random.default_rng(12345)
        scratch = np.empty(k.MAX_EPB_BYTES, np.uint8)
        ok = bad = 0
        for trial in range(400):
            n = int(rng.integers(0, 40))
            buf = rng.integers(0, 256, int(rng.integers(0, 20000)), dtype=np.uint8)
            wild = trial % 2 == 0  # half garbage, half mostly-valid
            hi = len(buf) + 3
            starts = rng.integers(-3 if wild else 0, hi, n).astype(np.int64)
            lengths = rng.integers(-3 if wild else 0, hi, n).astype(np.int64)
            if not wild:
                lengths = np.minimum(lengths, len(buf) - starts)
            n_if = int(rng.integers(1, 4))
            snaplens = rng.integers(1, k.MAX_SNAPLEN + 1, n_if).astype(np.int64)
            if_ids = rng.integers(-1 if wild else 0, n_if + (1 if wild else 0), n).astype(np.int32)
            ts = rng.integers(-2 if wild else 0, 2**63 - 1, n).astype(np.int64)
            pids = rng.integers(-2 if wild else 0, 2**63 - 1, n).astype(np.int64)
            words = [bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8))
                     for _ in range(int(rng.integers(0, 4)))]
            utf8 = np.frombuffer(b"".join(words), np.uint8)
            offsets = np.cumsum([0] + [len(w) for w in words]).astype(np.int64)
            cids = rng.integers(-2 if wild else -1, len(words) + (1 if wild else 0), n).astype(np.int32)
            for with_pids, with_cids in ((True, True), (False, True), (True, False), (False, False)):
                try:
                    size = sum(len(c) for c in k.epb_chunks(
                        buf, starts, lengths, if_ids, ts, snaplens, pids if with_pids else None,
                        cids if with_cids else None, utf8, offsets, scratch))
                    ok += 1
                except ValueError:
                    bad += 1
            try:
                pcap_ts = np.abs(ts) % (k.MAX_PCAP_TS_NS + 2)
                size = sum(len(c) for c in k.pcap_record_chunks(buf, starts, lengths, pcap_ts,
                                                                int(snaplens[0]), scratch))
                ok += 1
            except ValueError:
                bad += 1
        print(ok, bad)
    """)
    ok, bad = map(int, out.split())
    assert ok > 200 and bad > 200
