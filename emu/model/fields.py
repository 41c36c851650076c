"""A cursor over a located YAML tree that checks types and names the field.

``F(value, path, line, ctx)``: ``f.get("spec")`` walks down, the typed
accessors (``f.str()``, ``f.int()``, ...) check and convert, and any failure
raises ``ManifestError`` with file, line, object and field path.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Any, Iterable, NoReturn

from .load import ManifestError, Map, Seq, type_name

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_IANA_SVC = re.compile(r"^[-a-z0-9]+$")


def dns_label_problem(s: str) -> str | None:
    if len(s) > 63:
        return "must be at most 63 characters"
    if not _DNS_LABEL.match(s):
        return ("must be a DNS-1123 label: lowercase letters, digits and '-', "
                "starting and ending with a letter or digit")
    return None


def dns1035_label_problem(s: str) -> str | None:
    if len(s) > 63:
        return "must be at most 63 characters"
    if not _DNS1035_LABEL.match(s):
        return ("must be a DNS-1035 label: lowercase letters, digits and '-', "
                "starting with a letter and ending with a letter or digit")
    return None


def dns_subdomain_problem(s: str) -> str | None:
    if len(s) > 253:
        return "must be at most 253 characters"
    if not s or not all(_DNS_LABEL.match(p) and len(p) <= 63 for p in s.split(".")):
        return ("must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', "
                "starting and ending with a letter or digit")
    return None


def port_name_problem(s: str) -> str | None:
    """IANA_SVC_NAME, as container port names and named targetPorts must be."""
    if len(s) > 15:
        return "must be at most 15 characters"
    if not _IANA_SVC.match(s):
        return "may contain only lowercase letters, digits and '-'"
    if s.startswith("-") or s.endswith("-") or "--" in s:
        return "must not start or end with '-' or contain '--'"
    if not any(c.isalpha() for c in s):
        return "must contain at least one letter"
    return None


def label_key_problem(k: str) -> str | None:
    prefix, sep, name = k.rpartition("/")
    if sep:
        p = dns_subdomain_problem(prefix)
        if p:
            return f"prefix {prefix!r} {p}"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return ("must be [prefix/]name where name is at most 63 characters of letters, digits, "
                "'-', '_' or '.', starting and ending with a letter or digit")
    return None


def label_value_problem(v: str) -> str | None:
    if v and (len(v) > 63 or not _LABEL_NAME.match(v)):
        return ("must be empty or at most 63 characters of letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit")
    return None


class Ctx:
    __slots__ = ("file", "obj")

    def __init__(self, file: str, obj: str | None):
        self.file, self.obj = file, obj


class F:
    """One field: its value (None when absent), path and line."""

    __slots__ = ("value", "path", "line", "ctx")

    def __init__(self, value: Any, path: str, line: int, ctx: Ctx):
        self.value, self.path, self.line, self.ctx = value, path, line, ctx

    # -- errors and navigation

    def fail(self, problem: str) -> NoReturn:
        raise ManifestError(problem, self.ctx.file, self.line, self.ctx.obj, self.path or None)

    @property
    def present(self) -> bool:
        return self.value is not None

    def _child_path(self, key) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else str(key)

    def get(self, key: str) -> F:
        v = self.value
        if isinstance(v, Map) and key in v:
            return F(v[key], self._child_path(key), v.line_of(key), self.ctx)
        return F(None, self._child_path(key), self.line, self.ctx)

    def require(self) -> F:
        if self.value is None:
            self.fail("required field is missing")
        return self

    def _type(self, what: str) -> NoReturn:
        shown = f" ({self.value!r})" if isinstance(self.value, (str, int, float)) else ""
        self.fail(f"must be {what}, not {type_name(self.value)}{shown}")

    # -- containers

    def map(self, allowed: Iterable[str] | None = None) -> F:
        """Check this is a mapping (absent/null = empty) with only ``allowed`` keys."""
        if self.value is None:
            return self
        if not isinstance(self.value, Map):
            self._type("a mapping")
        if allowed is not None:
            allowed = set(allowed)
            for key in self.value:
                if key not in allowed:
                    f = F(self.value[key], self._child_path(key), self.value.line_of(key), self.ctx)
                    hint = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.75)
                    f.fail("unknown field" + (f' (did you mean "{hint[0]}"?)' if hint else ""))
        return self

    def keys(self) -> list[str]:
        return list(self.value) if isinstance(self.value, Map) else []

    def items(self) -> list[F]:
        """Elements of a list (absent/null = empty)."""
        if self.value is None:
            return []
        if not isinstance(self.value, Seq):
            self._type("a list")
        return [F(x, self._child_path(i), self.value.line_of(i), self.ctx)
                for i, x in enumerate(self.value)]

    def str_map(self, key_check=label_key_problem, value_check=label_value_problem) -> dict[str, str]:
        """A map of strings (labels, annotations, equality selectors)."""
        self.map()
        out: dict[str, str] = {}
        for key in self.keys():
            f = self.get(key) if isinstance(key, str) else None
            if f is None:
                F(key, self.path, self.value.line_of(key), self.ctx).fail(
                    f"key {key!r} must be a string (quote it)")
            if not isinstance(f.value, str):
                what = type_name(f.value)
                f.fail(f"must be a string, not {what}" + (
                    f" ({f.value!r}); quote it" if f.value is not None and not isinstance(f.value, (dict, list)) else ""))
            if key_check:
                p = key_check(key)
                if p:
                    f.fail(f"invalid key {key!r}: {p}")
            if value_check:
                p = value_check(f.value)
                if p:
                    f.fail(f"invalid value {f.value!r}: {p}")
            out[key] = f.value
        return out

    # -- scalars

    def str(self, default: str | None = None, choices: Iterable[str] | None = None,
            check=None) -> str | None:
        v = self.value
        if v is None:
            return default
        if not isinstance(v, str):
            self._type("a string")
        if choices is not None:
            choices = tuple(choices)
            if v not in choices:
                self.fail(f"{v!r} is not one of {', '.join(choices)}")
        if check is not None:
            p = check(v)
            if p:
                self.fail(f"{v!r} {p}")
        return v

    def int(self, default: int | None = None, lo: int | None = None, hi: int | None = None) -> int | None:
        v = self.value
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            self._type("an integer")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            if hi is None:
                self.fail(f"{v} must be at least {lo}")
            self.fail(f"{v} is out of range {lo}-{hi}")
        return v

    def bool(self, default: bool | None = None) -> bool | None:
        v = self.value
        if v is None:
            return default
        if not isinstance(v, bool):
            self._type("true or false")
        return v

    def ipv4(self) -> str | None:
        s = self.str()
        if s is None:
            return None
        return ipv4_or_fail(self, s)

    def cidr4(self) -> ipaddress.IPv4Network | None:
        s = self.str()
        if s is None:
            return None
        if "/" not in s:
            self.fail(f"{s!r} is not a CIDR (expected address/prefix, e.g. 10.244.0.0/16)")
        try:
            net = ipaddress.ip_network(s, strict=False)
        except ValueError:
            self.fail(f"{s!r} is not a valid CIDR")
        if net.version != 4:
            self.fail(f"{s!r}: IPv6 is not supported yet")
        if str(net) != s:
            self.fail(f"{s!r} has host bits set (did you mean {net}?)")
        return net


def ipv4_or_fail(f: F, s: str) -> str:
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        f.fail(f"{s!r} is not a valid IP address")
    if ip.version != 4:
        f.fail(f"{s!r}: IPv6 is not supported yet")
    return s
