"""Label selectors with the Kubernetes semantics (apimachinery labels.Selector).

Two shapes exist in the API:

- ``LabelSelector`` (metav1.LabelSelector: ``matchLabels`` + ``matchExpressions``),
  used by workloads (Deployment, ReplicaSet, StatefulSet, DaemonSet) and later
  NetworkPolicy. All requirements are ANDed; each matchLabels pair is an ``In``
  with one value.
- An equality map (``dict[str, str]``), used by Service ``spec.selector`` and
  Pod ``nodeSelector``.

Empty and nil differ, and it matters where:

- ``matches(LabelSelector(), labels)`` (the YAML ``selector: {}``) is True for
  every label set. Workloads may not have an empty selector (the loader
  rejects it, as the API server does); NetworkPolicy ``podSelector: {}``
  means "every pod in the namespace".
- ``matches(None, labels)`` (a nil selector) is False: it selects nothing.
- An equality map with no entries matches everything. A Service whose
  selector is absent or empty has *no* selector: the model stores
  ``Service.selector = None`` and its endpoints are user-managed
  EndpointSlices, never "all pods".

Operators: ``In`` and ``NotIn`` need a non-empty ``values``; ``Exists`` and
``DoesNotExist`` need it empty. ``NotIn`` (like ``!=``) matches objects that
lack the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

IN, NOT_IN, EXISTS, DOES_NOT_EXIST = "In", "NotIn", "Exists", "DoesNotExist"
OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST)


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def __post_init__(self):
        if self.operator not in OPERATORS:
            raise ValueError(f"operator must be one of {', '.join(OPERATORS)}")
        if self.operator in (IN, NOT_IN) and not self.values:
            raise ValueError(f"{self.operator} needs at least one value")
        if self.operator in (EXISTS, DOES_NOT_EXIST) and self.values:
            raise ValueError(f"{self.operator} takes no values")

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        if op == IN:
            return self.key in labels and labels[self.key] in self.values
        if op == NOT_IN:
            return self.key not in labels or labels[self.key] not in self.values
        if op == EXISTS:
            return self.key in labels
        return self.key not in labels  # DoesNotExist

    def __str__(self) -> str:
        if self.operator == EXISTS:
            return self.key
        if self.operator == DOES_NOT_EXIST:
            return f"!{self.key}"
        if self.operator == IN and len(self.values) == 1:
            return f"{self.key}={self.values[0]}"
        op = "in" if self.operator == IN else "notin"
        return f"{self.key} {op} ({','.join(sorted(self.values))})"


@dataclass(frozen=True)
class LabelSelector:
    """metav1.LabelSelector. ``match_labels`` is a sorted tuple of pairs so the
    selector is hashable; use ``dict(sel.match_labels)`` for a mapping."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @classmethod
    def of(cls, match_labels: Mapping[str, str] | None = None, *exprs: Requirement):
        return cls(tuple(sorted((match_labels or {}).items())), tuple(exprs))

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def requirements(self) -> tuple[Requirement, ...]:
        return tuple(Requirement(k, IN, (v,)) for k, v in self.match_labels) + self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements())

    def __str__(self) -> str:  # kubectl's string form
        return ",".join(str(r) for r in self.requirements())


def matches(selector: LabelSelector | Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """Does ``selector`` select an object carrying ``labels``? See the module
    docstring for empty vs nil."""
    if selector is None:
        return False
    if isinstance(selector, LabelSelector):
        return selector.matches(labels)
    return all(k in labels and labels[k] == v for k, v in selector.items())
