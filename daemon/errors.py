"""Failures a user can act on: the command line prints their message as one line and exits with
their code, never with a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user asked for cannot be done as asked; the message says what to do instead."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code
