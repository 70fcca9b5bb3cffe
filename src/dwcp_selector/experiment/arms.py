"""The two arms of an experiment on the transfer path, and where their split comes from.

:class:`ExperimentArms` gives :class:`~dwcp_selector.serving.TransferManager` the policy of each
transfer: it hashes the experiment unit (the transfer, its resource, or this node) with the
experiment's :class:`~dwcp_selector.experiment.Assignment` and answers the arm, its propensity and the
selector that decides (``None``: the rule heuristic). The split is either fixed or followed from a
rollout controller's state file (:class:`RolloutFollower`), re-read when the file changes, at most every
``interval_s``: a controller in another process moves the share (1 → 10 → 50 → 100 %, or 0 on a
rollback) and every sender follows within that interval, without a restart.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .assignment import Assignment

if TYPE_CHECKING:
    from ..serving.guarded import GuardedSelector

__all__ = ["ExperimentArms", "RolloutFollower"]


class RolloutFollower:
    """The current split of a rollout, read from the controller's state file (see ``rollout``).

    A missing or unreadable file is no experiment running: share 0 (everything to control), never an
    exception on the transfer path; the last good state is kept while a write is in progress.
    """

    def __init__(self, state_path: str | Path, *, interval_s: float = 1.0) -> None:
        self.path = Path(state_path)
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._checked = -float("inf")
        self._mtime: float | None = None
        self._assignment: Assignment | None = None
        self._control_policy = "champion"
        self.read_errors = 0

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.interval_s:
            return
        with self._lock:
            if now - self._checked < self.interval_s:
                return
            self._checked = now
            try:
                mtime = os.stat(self.path).st_mtime_ns / 1e9
            except OSError:
                self._assignment = None
                return
            if mtime == self._mtime:
                return
            try:
                state: dict[str, Any] = json.loads(self.path.read_text())
                plan = state["plan"]
                self._assignment = Assignment(
                    plan["experiment"],
                    float(state["share"]),
                    plan.get("unit", "resource"),
                    plan.get("salt", ""),
                )
                self._control_policy = str(state.get("control_policy", "champion"))
                self._mtime = mtime
            except (OSError, ValueError, KeyError, TypeError, ConfigError):
                self.read_errors += 1  # keep the last good state

    def assignment(self) -> Assignment | None:
        self._refresh()
        return self._assignment

    @property
    def control_policy(self) -> str:
        self._refresh()
        return self._control_policy


class ExperimentArms:
    """``control`` and ``treatment`` policies (``None``: the rule heuristic) split by ``assignment``."""

    def __init__(
        self,
        assignment: Assignment | RolloutFollower,
        control: GuardedSelector | None,
        treatment: GuardedSelector | None,
    ) -> None:
        self.source = assignment
        self.control = control
        self.treatment = treatment

    @property
    def assignment(self) -> Assignment | None:
        src = self.source
        return src.assignment() if isinstance(src, RolloutFollower) else src

    def choose(self, unit_id: str) -> tuple[str, str, float, GuardedSelector | None] | None:
        """(experiment, arm, propensity, selector) of ``unit_id``; ``None`` when no experiment runs."""
        a = self.assignment
        if a is None:
            return None
        arm, propensity = a.arm(unit_id)
        if arm == "treatment":
            return a.experiment, arm, propensity, self.treatment
        src = self.source
        heuristic = isinstance(src, RolloutFollower) and src.control_policy == "heuristic"
        return a.experiment, arm, propensity, None if heuristic else self.control
