"""Command parsing: options first, the prompt verbatim, clear errors."""

from __future__ import annotations

import pytest

from serve_apps.matrix.commands import Command, CommandError, help_text, parse


@pytest.mark.parametrize("body, expected", [
    ("!infer hello world", Command("infer", "hello world")),
    ("  !infer   spaced out  ", Command("infer", "spaced out")),
    ("!INFER upper", Command("infer", "upper")),
    ("!infer\nfirst line\nsecond", Command("infer", "first line\nsecond")),
    ("!infer --backend gpu-1 --model tiny-chat --max-tokens 12 it's \"quoted\"",
     Command("infer", "it's \"quoted\"", "gpu-1", "tiny-chat", 12)),
    ("!infer --max-tokens=7 --backend=a x", Command("infer", "x", "a", None, 7)),
    ("!infer -- --backend is part of the prompt", Command("infer", "--backend is part of the prompt")),
    ("!backends", Command("backends")),
    ("!models please", Command("models")),
    ("!help", Command("help")),
])
def test_parse(body, expected):
    assert parse(body) == expected


@pytest.mark.parametrize("body", ["hello", "!unknown thing", "infer hi", "", "!", "?infer hi"])
def test_not_a_command(body):
    assert parse(body) is None


@pytest.mark.parametrize("body, message", [
    ("!infer", "give a prompt"),
    ("!infer --backend", "--backend needs a value"),
    ("!infer --max-tokens ten hi", "--max-tokens needs a whole number"),
    ("!infer --max-tokens 0 hi", "between 1 and 100"),
    ("!infer --max-tokens 101 hi", "between 1 and 100"),
    ("!infer --temperature 2 hi", "unknown option --temperature"),
])
def test_errors_are_readable(body, message):
    with pytest.raises(CommandError, match=message):
        parse(body, max_tokens_limit=100)


def test_custom_prefix_and_help():
    assert parse("?infer hi", prefix="?") == Command("infer", "hi")
    assert parse("!infer hi", prefix="?") is None
    text = help_text("?", 64)
    assert "?infer [--backend NAME] [--model NAME] [--max-tokens N] <prompt>" in text
    assert "up to 64" in text
