"""What every command shares: an interrupt that lands inside a callback from C is not lost."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from cinr_container_helpers import ctrl_c_as_in_a_terminal

from cinr_codec.cli.common import lost_interrupts_redelivered


class _CtrlCInsideTheCallback(logging.Handler):
    """Raises SIGINT while pyvips' log callback (called from inside libvips) runs, once."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.fired = False

    def emit(self, record: logging.LogRecord) -> None:
        # From the C callback, on the main thread: a record another thread's libvips work logs
        # (an earlier test's leftover) would raise the signal outside any callback of this test.
        if (
            not self.fired
            and record.getMessage().startswith("VIPS:")
            and threading.current_thread() is threading.main_thread()
        ):
            self.fired = True
            signal.raise_signal(signal.SIGINT)


@pytest.fixture
def ctrl_c_in_a_vips_callback() -> Iterator[_CtrlCInsideTheCallback]:
    logger = logging.getLogger("pyvips")
    handler, level = _CtrlCInsideTheCallback(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    # Python's KeyboardInterrupt handler, as under a terminal: a suite started in the background
    # (``cmd &``) has SIGINT ignored, and the raised signal would do nothing.
    with ctrl_c_as_in_a_terminal():
        yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


_SIZES = iter(range(64, 1 << 20))


def _compute_in_libvips() -> None:
    """An operation libvips computes (a new size each time: its cache would answer a repeat),
    logging its threadpool's end through the callback."""
    import pyvips

    pyvips.Image.black(next(_SIZES), 64).avg()


def test_an_interrupt_dropped_in_a_callback_is_delivered_again(
    ctrl_c_in_a_vips_callback: _CtrlCInsideTheCallback,
) -> None:
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt), lost_interrupts_redelivered():
        _compute_in_libvips()
        assert ctrl_c_in_a_vips_callback.fired  # raised in the callback, and dropped there
        time.sleep(10)  # sent again: this sleep is interrupted
    assert time.monotonic() - start < 5


def test_without_it_the_interrupt_is_lost(ctrl_c_in_a_vips_callback: _CtrlCInsideTheCallback) -> None:
    """What the redelivery mends (the reason for it): Python drops the interrupt."""
    dropped = []
    previous, sys.unraisablehook = sys.unraisablehook, dropped.append
    try:
        _compute_in_libvips()
        time.sleep(0.1)
    finally:
        sys.unraisablehook = previous
    assert ctrl_c_in_a_vips_callback.fired
    assert [type(u.exc_value) for u in dropped] == [KeyboardInterrupt]


def test_a_command_that_ends_first_still_reports_the_interrupt(
    ctrl_c_in_a_vips_callback: _CtrlCInsideTheCallback,
) -> None:
    with pytest.raises(KeyboardInterrupt), lost_interrupts_redelivered():
        _compute_in_libvips()  # the command's last work; it returns before the 10 ms wait


def test_other_unraisable_exceptions_go_to_the_previous_hook() -> None:
    seen = []
    previous, sys.unraisablehook = sys.unraisablehook, seen.append
    try:
        with lost_interrupts_redelivered():

            class _Noisy:
                def __del__(self) -> None:
                    raise ValueError("in __del__")

            _Noisy()
    finally:
        sys.unraisablehook = previous
    assert [type(u.exc_value) for u in seen] == [ValueError]
