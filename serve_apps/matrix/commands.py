"""Parsing of chat commands: ``!infer [--backend NAME] [--model NAME] [--max-tokens N] <prompt>``,
``!backends``, ``!models``, ``!help``.

Options come first; the prompt is the rest of the message verbatim (quotes and apostrophes included,
which is why this is not shlex). ``--`` ends the options early.
"""

from __future__ import annotations

from dataclasses import dataclass

OPTIONS = {"--backend": "backend", "--model": "model", "--max-tokens": "max_tokens"}
NAMES = ("infer", "backends", "models", "help")


class CommandError(ValueError):
    """A malformed command; the message is shown to the user as is."""


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # one of NAMES
    prompt: str = ""
    backend: str | None = None
    model: str | None = None
    max_tokens: int | None = None


def help_text(prefix: str, max_tokens_limit: int) -> str:
    return (
        f"{prefix}infer [--backend NAME] [--model NAME] [--max-tokens N] <prompt>: ask the model; "
        f"reply in a thread to continue the conversation (N up to {max_tokens_limit})\n"
        f"{prefix}backends: health of each backend\n"
        f"{prefix}models: the models you can ask for\n"
        f"{prefix}help: this text"
    )


def parse(body: str, prefix: str = "!", max_tokens_limit: int = 2048) -> Command | None:
    """The command in a message body, None when the message is not addressed to the bot."""
    text = body.strip()
    if not text.startswith(prefix):
        return None
    token, _, rest = _split_token(text[len(prefix):])
    name = token.lower()
    if name not in NAMES:
        return None
    if name != "infer":
        return Command(name)
    return _parse_infer(rest, max_tokens_limit)


def _parse_infer(rest: str, max_tokens_limit: int) -> Command:
    values: dict[str, str] = {}
    remaining = rest.lstrip()
    while remaining.startswith("--"):
        token, _, after = _split_token(remaining)
        if token == "--":
            remaining = after
            break
        key, eq, inline = token.partition("=")
        if key not in OPTIONS:
            raise CommandError(f"unknown option {key}; options: {', '.join(OPTIONS)}")
        if eq:
            value = inline
        else:
            value, _, after = _split_token(after)
        if not value:
            raise CommandError(f"{key} needs a value")
        values[OPTIONS[key]] = value
        remaining = after
    prompt = remaining.strip()
    if not prompt:
        raise CommandError("give a prompt, e.g. !infer Write a haiku about GPUs")
    max_tokens = None
    if "max_tokens" in values:
        try:
            max_tokens = int(values["max_tokens"])
        except ValueError:
            raise CommandError("--max-tokens needs a whole number") from None
        if not 1 <= max_tokens <= max_tokens_limit:
            raise CommandError(f"--max-tokens must be between 1 and {max_tokens_limit}")
    return Command("infer", prompt, values.get("backend"), values.get("model"), max_tokens)


def _split_token(text: str) -> tuple[str, str, str]:
    text = text.lstrip()
    for index, char in enumerate(text):
        if char.isspace():
            return text[:index], char, text[index + 1:]
    return text, "", ""
