"""How numpy gets memory for large arrays from the kernel.

numpy asks for transparent huge pages (madvise MADV_HUGEPAGE) for arrays of
4 MiB and more. With THP's defrag=madvise (a common default) the first
touch of each 2 MiB page may stall in direct compaction, or, in a VM, while
the host backs the page: on the 2-core VM, first-touching 400 MB took 0.98 s
that way and 0.2 s with 4 KiB pages, and a single 2 MiB first touch inside
a conntrack insert batch cost 5 ms (the batch itself: 1.5 ms). Arrays that
are made ahead and first touched on the data path (a conntrack table's
records, a bulk run's buffers) are made without that request.
"""
from __future__ import annotations

import contextlib


def hugepages(on):
    """Set whether numpy asks for huge pages (None: leave it); returns what it
    was (None where this numpy has no such switch)."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:   # another numpy layout: leave it as it is
        return None
    return None if on is None else _set_madvise_hugepage(on)


@contextlib.contextmanager
def small_pages():
    """Arrays made inside get 4 KiB pages."""
    was = hugepages(False)
    try:
        yield
    finally:
        hugepages(was)
