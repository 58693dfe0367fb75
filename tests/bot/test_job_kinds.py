"""Each job kind is named once (bot.jobs.models), for lists and for results alike."""

from __future__ import annotations

import pytest

from bot.jobs.models import JobKind


@pytest.mark.parametrize("kind", list(JobKind))
def test_every_kind_has_its_names(kind: JobKind) -> None:
    assert kind.label and kind.yours.startswith("Your ")
