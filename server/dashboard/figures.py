"""The figures over every run that the overview and the runs page show (each role's figures, the
mean reward per day by role and by adapter), kept between page loads and read again only when
the runs changed (learning.runs.browse.runs_version): reading them is the dashboard's one cost
that grows with the store."""

from __future__ import annotations

from dataclasses import dataclass

from learning.runs.browse import DailyReward, daily_rewards, runs_version
from learning.runs.stats import RunStats, run_stats
from learning.store import Store


@dataclass(frozen=True)
class RunFigures:
    stats: RunStats
    daily_by_role: dict[str, list[DailyReward]]
    daily_by_adapter: dict[str, list[DailyReward]]


class FiguresCache:
    """The store's RunFigures, as of the runs' current version."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._version: tuple[int, int] | None = None
        self._figures: RunFigures | None = None

    def get(self) -> RunFigures:
        version = runs_version(self.store)
        if self._figures is None or version != self._version:
            self._figures = RunFigures(
                stats=run_stats(self.store, group_by="role"),
                daily_by_role=daily_rewards(self.store, by="role"),
                daily_by_adapter=daily_rewards(self.store, by="adapter"),
            )
            self._version = version
        return self._figures
