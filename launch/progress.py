"""Progress lines for long passes over a split, through absl logging like every other
job's output (training's progress line included), so one log holds the whole story and
nothing extra is needed on a worker without a terminal."""

import time

from absl import logging

LOG_EVERY_SECONDS = 10  # at most one progress line per this many seconds


class Progress:
    """`<what> N of TOTAL sentences (rate/s, ETA)` lines, then a summary line."""

    def __init__(self, what: str, *, total: int, every: float = LOG_EVERY_SECONDS):
        self.what, self.total, self.every, self.done = what, total, every, 0
        self.began = self.last = time.perf_counter()

    def add(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last >= self.every:
            rate = self.done / max(now - self.began, 1e-9)
            logging.info("%s %d of %d sentences (%.1f/s, ETA %.0f s)", self.what, self.done,
                         self.total, rate, max(self.total - self.done, 0) / max(rate, 1e-9))
            self.last = now

    def finish(self) -> None:
        logging.info("%s %d sentences in %.1f s", self.what, self.done,
                     time.perf_counter() - self.began)
