"""Argument checks shared by the evaluation commands: counts >= 1, output paths that can be
written and are none of the inputs, one-line usage errors (exit 2)."""

import argparse
import os

from iif_d2.utils.io import same_file

__all__ = ["OneLineParser", "check_output_path", "positive_int"]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr (exit 2, as argparse)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def check_output_path(path: str, inputs, option: str = "--json-out"):
    """Refuse, before anything is computed or written, an output path that is a directory, in a
    missing or unwritable folder, or the same file as one of ``inputs`` (the same path after
    resolving links, or the same file through a hard link).

    Raises:
        ValueError: a one-line message naming the problem and the fix.
    """
    if os.path.isdir(path):
        raise ValueError(f"{option} {path} is a directory; give a file name, e.g. metrics.json.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{option} {path}: folder {folder} does not exist; create it first.")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{option} {path}: folder {folder} is not writable; choose another.")
    for name in inputs:
        if same_file(path, name):
            raise ValueError(
                f"{option} {path} is the input file {name}; it would be overwritten: give "
                "another file name."
            )
