"""Every row of tools/bad_input_table.py: the bad input raises the error type it names, with
its message fragment; the command lines exit 2 with one line on stderr and no traceback."""

import os

import pytest
from helpers import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TABLE = load_tool("bad_input_table")


@pytest.mark.parametrize("row", TABLE.ROWS, ids=[row.what for row in TABLE.ROWS])
def test_bad_input(row, tmp_path):
    error = TABLE.run_row(row, str(tmp_path))  # raises unless type and fragment are right
    if isinstance(error, TABLE.CLIFailed):
        assert error.code == 2
        assert "Traceback" not in error.stderr
        lines = error.stderr.strip().splitlines()
        if lines[0].startswith("usage:"):  # argparse's own errors: usage, then the error
            lines = lines[-1:]
        assert len(lines) == 1 and lines[0].startswith(("error: ", "python -m iif_d2.cli: error"))


def test_rows_are_distinct():
    assert len({row.what for row in TABLE.ROWS}) == len(TABLE.ROWS)


def test_table_line_of_a_multi_line_error(tmp_path):
    error = ValueError(f"The config sets:\n  {tmp_path}/x is bad (started 12:00).\nUse another.")
    line = "The config sets: <tmp>/x is bad (started <time>)."
    assert TABLE.first_line(error, str(tmp_path)) == line
