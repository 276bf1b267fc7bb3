"""Durations ("250ms") and sizes ("10MiB") as routes.toml spells them (docs/configuration.md)."""

from __future__ import annotations

import pytest

from gateway.units import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("1ms", 0.001),
        ("5s", 5.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        (" 5s ", 5.0),
        ("5 s", 5.0),
        ("0s", 0.0),  # zero is a valid duration here; the config model rejects it where it matters
    ],
)
def test_duration_strings_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "5",  # a unit is required: "5" is ambiguous
        "",
        "s",
        "-5s",
        "5S",
        "5sec",
        "1d",
        "1e3s",
        "5 ms s",
        "ms5",
        "five seconds",
        5,  # durations are strings, not numbers
        2.5,
        True,
        None,
        ["5s"],
    ],
)
def test_bad_durations_are_rejected_with_an_example(value: object) -> None:
    with pytest.raises(ValueError, match="duration") as caught:
        parse_duration(value)
    assert repr(value) in str(caught.value)  # the message shows what was given


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1024, 1024),
        ("10", 10),
        ("10B", 10),
        ("512KB", 512_000),
        ("1MB", 1_000_000),
        ("1GB", 1_000_000_000),
        ("10KiB", 10 * 1024),
        ("10MiB", 10 * 1024 * 1024),
        ("1GiB", 1024**3),
        (" 10 MiB ", 10 * 1024 * 1024),
    ],
)
def test_sizes_parse_to_bytes(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    "value",
    [
        -1,
        "-1",
        "-10MiB",
        "1.5MiB",
        "10mib",
        "10k",
        "10 TiB",
        "MiB",
        "",
        1.5,
        True,
        None,
        ["10MiB"],
    ],
)
def test_bad_sizes_are_rejected(value: object) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(value)
    assert repr(value) in str(caught.value) or str(value) in str(caught.value)


def test_negative_size_says_so() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_size(-5)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "250ms"),
        (0.001, "1ms"),
        (1.5, "1500ms"),
        (5.0, "5s"),
        (90.0, "90s"),
        (60.0, "1m"),
        (600.0, "10m"),
        (3600.0, "1h"),  # the shortest form, as the docstring promises
        (7200.0, "2h"),
    ],
)
def test_format_duration_gives_the_shortest_form(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.001, 0.25, 1.5, 5.0, 59.0, 60.0, 90.0, 3600.0, 86400.0])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
