"""Listing helpers shared by the cogs: autocomplete choices."""

from __future__ import annotations

from bot.pages import matching_choices


def test_choices_match_name_in_any_case_or_id_clip_names_and_stop_at_25() -> None:
    named = [("Alice", "v1"), ("Bob", "alice-2"), ("Carol", "v3"), ("x" * 150, "v4")]

    assert [c.value for c in matching_choices(named, "ALI")] == ["v1", "alice-2"]
    assert [c.value for c in matching_choices(named, "v3")] == ["v3"]
    [long] = matching_choices(named, "xx")
    assert len(long.name) == 100 and long.name.endswith("…")
    assert len(matching_choices([(f"n{i}", str(i)) for i in range(40)], "")) == 25
