"""Plain-Python Internet checksums on bytes and ints: RFC 1071's sum of
big-endian 16-bit words with end-around carry, RFC 1624 eqn. 3 for updates,
the IPv4 pseudo-header of RFC 793/768 and UDP's zero rule."""
from __future__ import annotations

L4_CHECK_OFFSET = {1: 2, 6: 16, 17: 6}  # ICMP, TCP, UDP


def ones_sum(data: bytes) -> int:
    """16-bit ones' complement sum of `data` (an odd last byte padded with zero)."""
    if len(data) % 2:
        data = data + b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        while total > 0xFFFF:
            total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data: bytes) -> int:
    """RFC 1071: the ones' complement of the ones' complement sum."""
    return ~ones_sum(data) & 0xFFFF


def zero_field(data: bytes, offset: int) -> bytes:
    """`data` with the 16-bit field at `offset` set to zero."""
    return data[:offset] + b"\x00\x00" + data[offset + 2:]


def ipv4_header_checksum(header: bytes) -> int:
    """Checksum of an IPv4 header (its length from the IHL), its own field as zero."""
    ihl = (header[0] & 0xF) * 4
    return internet_checksum(zero_field(header[:ihl], 10))


def l4_checksum(src: int, dst: int, proto: int, segment: bytes) -> int:
    """ICMP, TCP or UDP checksum of `segment` (header and data), its own
    field as zero; TCP and UDP include the IPv4 pseudo-header; UDP sends a
    computed 0 as 0xFFFF (RFC 768)."""
    data = zero_field(segment, L4_CHECK_OFFSET[proto])
    if proto != 1:
        pseudo = (src.to_bytes(4, "big") + dst.to_bytes(4, "big")
                  + bytes([0, proto]) + len(segment).to_bytes(2, "big"))
        data = pseudo + data
    c = internet_checksum(data)
    if proto == 17 and c == 0:
        c = 0xFFFF
    return c


def _ones_add(a: int, b: int) -> int:
    s = a + b
    return (s & 0xFFFF) + (s >> 16)


def update(check: int, old_words: list[int], new_words: list[int], udp: bool = False) -> int:
    """RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), word by word; with `udp`, a
    zero checksum (none) stays zero and a computed zero becomes 0xFFFF."""
    if udp and check == 0:
        return 0
    s = ~check & 0xFFFF
    for m, m_new in zip(old_words, new_words):
        s = _ones_add(s, ~m & 0xFFFF)
        s = _ones_add(s, m_new)
    c = ~s & 0xFFFF
    if udp and c == 0:
        c = 0xFFFF
    return c


def update16(check: int, old: int, new: int, udp: bool = False) -> int:
    return update(check, [old], [new], udp)


def update32(check: int, old: int, new: int, udp: bool = False) -> int:
    return update(check, [old >> 16, old & 0xFFFF], [new >> 16, new & 0xFFFF], udp)
