"""The member-facing similarity: raw cosine mapped between "a stranger" and "the same person"."""

from __future__ import annotations

import pytest

from engine.voice.similarity import DVECTOR, RESEMBLYZER, Calibration, Likeness, likeness

pytestmark = pytest.mark.no_database


def test_a_stranger_scores_zero_and_a_second_recording_a_hundred() -> None:
    cal = Calibration("test", different=0.5, same=0.9)
    assert cal.percent(0.5) == 0
    assert cal.percent(0.3) == 0  # further than a typical stranger still reads 0, not negative
    assert cal.percent(0.7) == 50
    assert cal.percent(0.9) == 100
    assert cal.percent(0.99) == 100
    assert cal.percent(None) is None


@pytest.mark.parametrize(
    ("percent", "words"),
    [
        (0, Likeness.FAR),
        (34, Likeness.FAR),
        (35, Likeness.SOMEWHAT),
        (69, Likeness.SOMEWHAT),
        (70, Likeness.CLOSE),
        (100, Likeness.CLOSE),
    ],
)
def test_scores_in_words(percent: int, words: Likeness) -> None:
    assert likeness(percent) is words


def test_the_old_flattering_figures_are_gone() -> None:
    """Issue 13: a different person used to read about 60 %, the base voice 97 %."""
    stranger = 0.57  # resemblyzer, the unconverted base voice against a real speaker
    assert RESEMBLYZER.percent(stranger) is not None
    assert likeness(RESEMBLYZER.percent(stranger) or 0) is Likeness.FAR
    # Each encoder has its own scale: the same raw number means different things.
    assert DVECTOR.percent(0.57) != RESEMBLYZER.percent(0.57)
