"""The argument parser behind every ``electric`` command: one-line errors, ini keys.

Operators get one line and exit code 2 for any command-line or ini-file mistake, never the
usage text (``--help`` shows that). Ini keys are the long flag names without the leading
dashes, spelt with dashes or underscores (``status-port`` or ``status_port``); an unknown key
or a missing ``--config`` file is reported by name before anything else is parsed.
"""

from __future__ import annotations

import argparse
import configparser
import os
import sys
from typing import NoReturn

import configargparse

EXIT_USAGE = 2
CONFIG_FLAGS = ("-c", "--config")


class OneLineErrors:
    """Mixin for argparse parsers: ``error()`` prints one line instead of the usage text."""

    prog: str

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


class HelpFormatter(configargparse.ArgumentDefaultsHelpFormatter,
                    configargparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option; description and epilog printed as written."""


class ElectricArgParser(OneLineErrors, configargparse.ArgParser):
    """configargparse with Electric's ini rules (see the module docstring)."""

    def get_possible_config_keys(self, action: argparse.Action) -> list[str]:
        keys = super().get_possible_config_keys(action)
        return keys + [k.replace("-", "_") for k in keys if not k.startswith("-") and "-" in k]

    def known_config_keys(self) -> set[str]:
        return {key for action in self._actions for key in self.get_possible_config_keys(action)}


class ConfigFileProblem(Exception):
    """The ``--config`` file is missing, unreadable or has a key Electric does not know."""

    def __init__(self, path: str, problem: str):
        super().__init__(problem)
        self.path = path


def config_path(argv: list[str]) -> str | None:
    """The file named by ``-c/--config`` in ``argv`` (the last one wins, like argparse)."""
    path = None
    for i, arg in enumerate(argv):
        if arg in CONFIG_FLAGS and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    return path


def check_config_file(argv: list[str], parser: ElectricArgParser) -> None:
    """Refuse a missing ``--config`` file or an unknown key in it, naming the file and key."""
    path = config_path(argv)
    if path is None:
        return
    if not os.path.isfile(path):
        raise ConfigFileProblem(path, f"{path} does not exist")
    ini = configparser.ConfigParser(delimiters=("=", ":"), comment_prefixes=("#", ";"),
                                    inline_comment_prefixes=("#", ";"), interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            ini.read_file(f)
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise ConfigFileProblem(path, f"cannot read {path}: {reason}") from None
    known = parser.known_config_keys()
    for section in ini.sections() or [configparser.DEFAULTSECT]:
        for key in ini[section]:
            if key not in known:
                raise ConfigFileProblem(
                    path, f"unknown key {key!r} in {path} (keys are the long flag names "
                          f"without dashes, e.g. status-port; see electric --help)")
