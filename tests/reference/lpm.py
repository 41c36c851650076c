"""Plain-Python longest-prefix match: a routing table is a dict from
(prefix, length) to next hop, and a lookup tries every length, longest
first, as the definition says (RFC 1812 section 5.2.4.3)."""
from __future__ import annotations

NO_ROUTE = -1


def mask(length: int) -> int:
    """The netmask of a prefix length, as an int."""
    return ((1 << length) - 1) << (32 - length)


def lookup(table: dict[tuple[int, int], int], addr: int) -> int:
    """Next hop of the longest prefix of `table` containing `addr`, or -1."""
    for length in range(32, -1, -1):
        nexthop = table.get((addr & mask(length), length))
        if nexthop is not None:
            return nexthop
    return NO_ROUTE


def valid_prefix(prefix: int, length: int) -> bool:
    """No address bit set past the prefix length (what `ip route add` demands)."""
    return prefix & ~mask(length) & 0xFFFFFFFF == 0


class Table:
    """A routing table that changes: add replaces, remove of an absent route fails."""

    def __init__(self, routes=()):
        self.routes: dict[tuple[int, int], int] = {}
        for prefix, length, nexthop in routes:
            if (prefix, length) in self.routes:
                raise ValueError("duplicate route")
            self.routes[(prefix, length)] = nexthop

    def add(self, prefix: int, length: int, nexthop: int) -> int:
        old = self.routes.get((prefix, length), NO_ROUTE)
        self.routes[(prefix, length)] = nexthop
        return old

    def remove(self, prefix: int, length: int) -> int:
        return self.routes.pop((prefix, length))

    def lookup(self, addr: int) -> int:
        return lookup(self.routes, addr)

    def sorted_routes(self) -> list[tuple[int, int, int]]:
        return sorted((p, n, h) for (p, n), h in self.routes.items())
