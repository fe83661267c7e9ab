"""Errors shared between modules (a leaf module: it imports nothing of ours)."""

from __future__ import annotations

from dataclasses import dataclass


class WatchdogError(Exception):
    """Base of every error the watchdog reports to the user."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a configuration file."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(WatchdogError):
    """A configuration file has one or more problems; all of them are listed."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StoreError(WatchdogError):
    """The state store cannot be used; the message says why and what to do."""


class StoreNotReady(StoreError):
    """A read-only open found the database before the daemon finished creating it."""


class UsageError(WatchdogError):
    """A command was called with arguments that cannot work (exit code 2)."""


class LocalProblem(WatchdogError):
    """A check could not be run because of a problem on this machine (a CA file
    that cannot be read), not of the service: there is no verdict on the service."""
