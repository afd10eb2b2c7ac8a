"""The progress line: step, loss, view-images/s and ETA on stderr.

On a terminal one line redraws in place; in a log file (not a TTY) a line is written every
twentieth of the run, so CI logs stay short. (tqdm redraws with carriage returns in a file too,
which is why this small class stays.)
"""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress bar (step, loss, images/s, ETA) on stderr; periodic lines when not a TTY."""

    def __init__(self, total: int, enabled: bool = True, stream=None):
        self.total, self.enabled = total, enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_print = 0.0
        self.every = max(1, total // 20)

    def update(self, step: int, loss: float, ips: float, eta_s: float, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        frac = step / max(1, self.total)
        eta = time.strftime("%H:%M:%S", time.gmtime(max(0.0, eta_s)))
        text = (f"step {step}/{self.total} [{'#' * int(frac * 20):<20}] loss {loss:.4f} "
                f"{ips:,.0f} img/s ETA {eta}")
        if self.tty:
            if force or now - self.last_print > 0.2:
                self.stream.write("\r" + text + " " * 4)
                self.stream.flush()
                self.last_print = now
        elif force or step % self.every == 0:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
