"""Options stated once: each configuration dataclass field carries its default and its help.

`option(default, help)` is a dataclass field whose metadata holds the help text; the scripts
build their command-line flags from such fields (cli.add_options), so a default, a type and a
description live in one place, next to the field they configure. No argparse here: the library
parses no command lines.
"""
from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any


def option(default: Any = MISSING, help: str = "", *, factory: Any = MISSING, **flag: Any) -> Any:
    """A dataclass field with `help` (and extra argparse keywords in `flag`, e.g. choices) as metadata."""
    if not help:
        raise ValueError("every option needs its help text")
    kw = {"default": default} if factory is MISSING else {"default_factory": factory}
    return field(**kw, metadata={"help": help, **flag})
