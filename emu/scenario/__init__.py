"""Scenario files (spec), their steps (steps) and the runner (runner)."""
from emu.scenario.runner import Report, run
from emu.scenario.spec import Scenario, is_scenario, load

__all__ = ["Report", "Scenario", "is_scenario", "load", "run"]
