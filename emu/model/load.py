"""Reading manifests: paths (files, folders, "-" for stdin) -> raw documents
that remember where every value came from.

YAML is parsed with PyYAML's SafeLoader in two steps (compose, then our own
construction) so each mapping and sequence keeps the line of itself and of
each of its entries. Scalars are resolved by the SafeLoader (YAML 1.1 rules,
as Kubernetes' go-yaml does: `yes`/`on` are booleans, so quote such label
values). Duplicate keys in one mapping are an error, as with
`kubectl --validate=strict`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Iterator

import yaml

from emu.errors import EmuError

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN_NAME = "<stdin>"


class ManifestError(EmuError):
    """Bad input in a manifest. ``str(err)`` is the whole readable line,
    ``file:line: Kind namespace/name: field.path: problem``; the parts are
    kept as attributes for tools (any may be None when it does not apply)."""

    def __init__(
        self,
        problem: str,
        file: str | None = None,
        line: int | None = None,
        obj: str | None = None,
        path: str | None = None,
    ):
        self.problem, self.file, self.line, self.obj, self.path = problem, file, line, obj, path
        parts = []
        if file is not None:
            parts.append(f"{file}:{line}" if line is not None else file)
        if obj:
            parts.append(obj)
        if path:
            parts.append(path)
        parts.append(problem)
        super().__init__(": ".join(parts))


class Map(dict):
    """A YAML mapping: a dict that also knows its own line and each key's line."""

    line: int
    key_lines: dict

    def line_of(self, key) -> int:
        return self.key_lines.get(key, self.line)


class Seq(list):
    """A YAML sequence: a list that also knows its own line and each item's line."""

    line: int
    item_lines: list

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


@dataclass(frozen=True)
class RawDoc:
    """One top-level object as read: its located tree and where it starts.
    ``list_index`` is the position inside a ``kind: List`` (None otherwise)."""

    file: str
    line: int
    data: Any = field(repr=False, compare=False)
    list_index: int | None = None


# libyaml's parser when PyYAML has it (same nodes and marks, much faster);
# scalars are still resolved by the SafeLoader rules.
_Composer = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _construct(node: yaml.Node, loader: yaml.SafeLoader, file: str) -> Any:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # YAML merge keys (<<)
        out = Map()
        out.line, out.key_lines = line, {}
        for key_node, value_node in node.value:
            key = _construct(key_node, loader, file)
            if isinstance(key, (Map, Seq)):
                raise ManifestError(
                    "a mapping key must be a plain value", file, key_node.start_mark.line + 1
                )
            if key in out:
                raise ManifestError(
                    f"duplicate key {key!r} (first at line {out.key_lines[key]})",
                    file,
                    key_node.start_mark.line + 1,
                )
            out[key] = _construct(value_node, loader, file)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        out = Seq()
        out.line = line
        out.item_lines = [item.start_mark.line + 1 for item in node.value]
        out.extend(_construct(item, loader, file) for item in node.value)
        return out
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as e:  # e.g. an unknown tag
        raise ManifestError(f"invalid YAML value: {getattr(e, 'problem', None) or e}", file, line) from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. `!!int x`, a bad timestamp
        raise ManifestError(f"invalid YAML value {node.value!r}: {e}", file, line) from None


def _yaml_error(e: yaml.YAMLError, file: str) -> ManifestError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    msg = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    return ManifestError(msg, file, mark.line + 1 if mark is not None else None)


def parse_text(text: str, file: str) -> list[RawDoc]:
    """All documents in one YAML text, in order; empty documents are skipped
    and a ``kind: List`` is expanded into its items."""
    loader = yaml.SafeLoader("")
    docs: list[RawDoc] = []
    try:
        for node in yaml.compose_all(text, Loader=_Composer):
            if node is None:
                continue
            data = _construct(node, loader, file)
            if data is None:
                continue
            line = node.start_mark.line + 1
            if not isinstance(data, Map):
                raise ManifestError(
                    f"a manifest document must be a mapping with apiVersion and kind, "
                    f"not {type_name(data)}",
                    file,
                    line,
                )
            if _is_list(data):
                items = data.get("items")
                if items is None:
                    continue
                if not isinstance(items, Seq):
                    raise ManifestError(
                        f"a List's items must be a list, not {type_name(items)}",
                        file,
                        data.line_of("items"),
                        None,
                        "items",
                    )
                for i, item in enumerate(items):
                    if not isinstance(item, Map):
                        raise ManifestError(
                            f"must be a mapping with apiVersion and kind, not {type_name(item)}",
                            file,
                            items.line_of(i),
                            None,
                            f"items[{i}]",
                        )
                    docs.append(RawDoc(file, item.line, item, i))
            else:
                docs.append(RawDoc(file, line, data))
    except yaml.YAMLError as e:
        raise _yaml_error(e, file) from None
    return docs


def _is_list(data: Map) -> bool:
    """``kind: List`` (what ``kubectl get -o yaml`` prints) or a typed list such
    as ``ServiceList`` (what the API returns)."""
    kind = data.get("kind")
    return isinstance(kind, str) and (kind == "List" or (kind.endswith("List") and "items" in data))


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def expand_paths(paths: Iterable[str]) -> Iterator[str]:
    """Files to read, as ``kubectl apply -f`` takes them: a file as is, a folder
    recursively (``*.yaml``, ``*.yml``, ``*.json`` in sorted order), ``-`` for stdin."""
    for p in paths:
        p = os.fspath(p)
        if p == "-":
            yield p
        elif os.path.isdir(p):
            found = []
            for root, dirs, files in os.walk(p):
                dirs.sort()
                found.extend(
                    os.path.join(root, f) for f in files if f.endswith(MANIFEST_SUFFIXES)
                )
            if not found:
                raise ManifestError(f"folder has no {', '.join(MANIFEST_SUFFIXES)} files", p)
            yield from sorted(found)
        elif os.path.exists(p):
            yield p
        else:
            raise ManifestError("no such file or folder", p)


def read_docs(paths: Iterable[str], stdin: IO[str] | str | None = None) -> list[RawDoc]:
    """Every document from every path, in the order given. ``stdin`` may be a
    text stream or a string; default ``sys.stdin``. "-" may appear once."""
    docs: list[RawDoc] = []
    stdin_read = False
    for p in expand_paths(paths):
        if p == "-":
            if stdin_read:
                raise ManifestError('"-" (stdin) given more than once')
            stdin_read = True
            src = sys.stdin if stdin is None else stdin
            text = src if isinstance(src, str) else src.read()
            docs.extend(parse_text(text, STDIN_NAME))
            continue
        docs.extend(parse_text(read_text(p), p))
    return docs


def read_text(path: str) -> str:
    """A file's text, or a ManifestError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ManifestError(f"not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    except OSError as e:
        raise ManifestError(f"cannot read: {e.strerror}", path) from None
