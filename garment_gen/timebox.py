"""Wall-clock time boxes for chained stages (:mod:`garment_gen.pipeline`).

:class:`TimeBudget` splits one total budget over several stages by fractions, computed from
the time actually left when each stage starts, so a stage that overran (setup, export and
validation lie outside Lightning's timer) shortens the later ones instead of pushing the whole
run past its limit. :func:`hms` writes a box as Lightning's ``max_time``.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("garment_gen.timebox")


def hms(seconds: float) -> str:
    """Seconds -> Lightning's ``DD:HH:MM:SS`` ``max_time`` string (at least one second)."""
    seconds = max(1, int(seconds))
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class TimeBudget:
    """Split ``seconds`` of wall clock over named stages by fractions of what is left.

    ``fractions`` maps each stage (in run order) to its share of the whole budget; whatever
    they leave below 1 is the reserve for the work after the last stage (evaluation, export).
    When a stage starts, its box is the time left, less the overhead expected for every stage
    still to run, times its share of the fractions still to come (reserve included). The
    expected overhead is the largest measured so far: a stage's wall time beyond its box
    (config, data set-up, export, the last step finishing).
    """

    def __init__(self, seconds: float, fractions: dict[str, float], min_box: float = 1.0):
        total = sum(fractions.values())
        if not fractions or any(f <= 0 for f in fractions.values()) or total > 1 + 1e-9:
            raise ValueError(
                f"stage fractions must be positive and sum to at most 1, got {fractions}"
            )
        self.seconds = float(seconds)
        self.fractions = dict(fractions)
        self.reserve = max(0.0, 1.0 - total)
        self.min_box = min_box
        self.start = time.monotonic()
        self.overhead = 0.0
        self._todo = list(fractions)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def box(self, stage: str) -> float:
        """The time box of ``stage``, which must be the next one not yet run."""
        if not self._todo or self._todo[0] != stage:
            raise ValueError(f"stage {stage!r} is not the next one of {self._todo}")
        share = self.fractions[stage] / (sum(self.fractions[s] for s in self._todo) + self.reserve)
        return max(self.min_box, (self.left() - self.overhead * len(self._todo)) * share)

    def done(self, stage: str, box: float, wall: float) -> None:
        """Record that ``stage`` took ``wall`` seconds for a box of ``box``."""
        self._todo.remove(stage)
        self.overhead = max(self.overhead, wall - box)
