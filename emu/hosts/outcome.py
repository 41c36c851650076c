"""What an app's request becomes once the virtual clock has run: finished or
not, and with an error or not. Results carry `finished_ns` and `error`."""
from __future__ import annotations


class Outcome:
    finished_ns: int | None
    error: str | None

    @property
    def done(self) -> bool:
        return self.finished_ns is not None

    @property
    def ok(self) -> bool:
        return self.done and self.error is None
