"""Version ids: the registry's order is the order they were made in."""

from __future__ import annotations


def test_versions_made_in_one_second_sort_by_time():
    """Two training runs in one second (fast data, two trainers) list oldest first, as every
    registry's versions() promises: the id's hex is the microsecond, not a random number."""
    from datetime import UTC, datetime, timedelta

    from registry.store import VERSION_RE, new_version

    t = datetime(2026, 12, 2, 15, 42, 50, tzinfo=UTC)
    made = [new_version(t + timedelta(microseconds=us)) for us in (999_999, 0, 1, 65_536, 500_000)]
    assert all(VERSION_RE.match(v) for v in made), made
    assert sorted(made) == [new_version(t + timedelta(microseconds=us)) for us in (0, 1, 65_536, 500_000, 999_999)]
    assert new_version(t + timedelta(seconds=1)) > max(made)  # and the next second after all of them
