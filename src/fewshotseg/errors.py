"""Errors that are the user's to fix. The CLI prints their message (which names the file or setting, what is wrong
and what to do) and exits with code 2; anything else is an internal error with a crash log."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input, the settings or the environment that the user must fix."""


class SettingError(UserError, ValueError):
    """A setting (flag, preset or YAML field) with a wrong type or out of its allowed range."""


class RunFolderError(UserError, FileExistsError):
    """A run folder that cannot be written: locked by another process, or holding another run's results."""


class DivergedError(UserError, FloatingPointError):
    """A loss or weight became NaN or infinite (e.g. a learning rate far too large)."""
