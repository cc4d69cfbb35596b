"""The `layoutja` command: a thin layer over the stages' functions."""

from layoutja.cli.main import main

__all__ = ["main"]
