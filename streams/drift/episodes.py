"""Drift episodes: one alert when drift starts, one when it ends, nothing in between. Pure Python.

`streams.drift.monitor.DriftMonitor` keeps one `EpisodeTracker` per task for traffic and one for
canaries, and turns their events into `drift.alerts` records. The state is four numbers with
`to_dict`/`from_dict`, so it can live in a Faust table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Event = Literal["open", "recovered"]


@dataclass(slots=True)
class EpisodeTracker:
    """Per-window verdicts -> alert events: "open" once when drift starts, "recovered" once when it ends.

    A person should get one alert per drift episode, not one per drifted window, and a drift hovering
    at the threshold should not flap. An episode opens after `confirm` consecutive drifted windows
    and recovers after `clear` consecutive clean ones; nothing is emitted in between, however long
    the drift lasts. confirm = 1 keeps detection within the first drifted window. Fed by a sequential
    detector (which fires once, then restarts), choose `clear` above its re-alarm time or feed
    `window_drifted or detector.drift_detected`.

    Parameters
    ----------
    confirm
        Consecutive drifted windows before an episode opens (the task's `drift.confirm_windows`).
    clear
        Consecutive clean windows before it recovers (`drift.clear_windows`).
    active
        Whether an episode is open (restored state).
    streak
        Consecutive windows contradicting the current state (restored state).

    Examples
    --------
    >>> t = EpisodeTracker(confirm=2, clear=2)
    >>> [t.update(d) for d in [False, True, True, True, False, True, False, False]]
    [None, None, 'open', None, None, None, None, 'recovered']
    >>> t.active, EpisodeTracker.from_dict(t.to_dict()) == t
    (False, True)
    """

    confirm: int = 1
    clear: int = 3
    active: bool = False
    streak: int = 0  # consecutive windows contradicting the current state

    def update(self, drifted: bool) -> Event | None:
        self.streak = self.streak + 1 if drifted != self.active else 0
        if not self.active and self.streak >= self.confirm:
            self.active, self.streak = True, 0
            return "open"
        if self.active and self.streak >= self.clear:
            self.active, self.streak = False, 0
            return "recovered"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"confirm": self.confirm, "clear": self.clear, "active": self.active, "streak": self.streak}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EpisodeTracker:
        return cls(int(d["confirm"]), int(d["clear"]), bool(d["active"]), int(d["streak"]))
