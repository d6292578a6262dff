"""Progress bars a person sees in a terminal and logs never do.

One decision for every long command (prepare, evaluate, train, tune): bars are drawn when
stderr is a terminal, and not at all otherwise (a log file, CI, `ray job submit` output, a
pipe), where a bar's carriage-return redraws would only be noise. FACEGEN_PROGRESS=1 forces
them on, FACEGEN_PROGRESS=0 off. The bars are tqdm's; Ray Data's own bars (prepare, the reals
of evaluate) follow the same decision through `configure_ray_data`.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

ENV = "FACEGEN_PROGRESS"
_ON = {"1", "true", "yes", "on"}
_OFF = {"0", "false", "no", "off"}


def enabled(stream: IO[str] | None = None) -> bool:
    """Whether to draw progress bars on `stream` (default sys.stderr): FACEGEN_PROGRESS when
    set to a yes/no value, else whether the stream is a terminal."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in _ON:
        return True
    if forced in _OFF:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _NoBar:
    """What bar() returns when tqdm is not installed: the calls a bar takes, doing nothing."""

    n = 0
    disable = True

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    *,
    initial: int = 0,
    stream: IO[str] | None = None,
    **kw: Any,
):
    """A tqdm bar on `stream` (default stderr), disabled (it writes nothing) when not
    enabled(stream). Use as a context manager or close() it."""
    try:
        from tqdm import tqdm
    except ImportError:  # a dependency; only a broken install lacks it
        return _NoBar()
    stream = sys.stderr if stream is None else stream
    kw.setdefault("leave", False)
    kw.setdefault("dynamic_ncols", True)
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream, disable=not enabled(stream), **kw)


def configure_ray_data(ctx: Any = None) -> bool:
    """Ray Data's progress bars on this driver follow enabled(): on in a terminal, off in logs
    (where Ray would otherwise log a progress line every few seconds). Returns the choice."""
    if ctx is None:
        from ray.data import DataContext

        ctx = DataContext.get_current()
    on = enabled()
    ctx.enable_progress_bars = on
    if not on:
        try:  # Ray's once-per-process hint on how to turn its bars back on; ours is FACEGEN_PROGRESS=1
            from ray.util.debug import log_once

            log_once("ray_data_progress_manager_disabled")
        except ImportError:
            pass
    return on


class PolledBar:
    """A bar for work that runs elsewhere (Ray Train workers): a thread calls `poll()` every
    `interval` seconds and moves the bar to the count it returns (None: nothing yet).

    poll() -> (count, postfix text) | None. Nothing runs when bars are off (enabled() false),
    so logs and CI pay nothing for it. Use as a context manager."""

    def __init__(
        self,
        poll,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        interval: float = 1.0,
        stream: IO[str] | None = None,
    ):
        self.poll, self.interval = poll, interval
        self.on = enabled(stream)
        self.bar = bar(total=total, desc=desc, unit=unit, stream=stream, unit_scale=True) if self.on else None
        self._stop = None
        self._thread = None

    def update_once(self) -> None:
        """One poll: move the bar to the reported count (never backwards) and show the postfix."""
        if self.bar is None:
            return
        try:
            got = self.poll()
        except Exception:  # noqa: BLE001 - a progress bar never breaks the work it shows
            return
        if not got:
            return
        count, postfix = got
        if count > self.bar.n:
            self.bar.update(count - self.bar.n)
        if postfix:
            self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.refresh()

    def __enter__(self):
        if self.on:
            import threading

            self._stop = threading.Event()

            def loop():
                while not self._stop.wait(self.interval):
                    self.update_once()

            self._thread = threading.Thread(target=loop, name="facegen-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self.update_once()
        if self.bar is not None:
            self.bar.close()
