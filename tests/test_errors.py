"""One-line error summaries (failure reports, warnings, CLI messages) never fail on the error they summarise."""

from __future__ import annotations

from distsleep.errors import first_line


def test_first_line_of_an_error():
    assert first_line(ValueError("\n   \n  the file is truncated  \nTraceback ...")) == "the file is truncated"
    assert first_line(ValueError("x" * 500), 200) == "x" * 200
    assert first_line("a Ray task's error text\nsecond line") == "a Ray task's error text"
    # Raised without a message (AssertionError(), a bare KeyboardInterrupt): "" rather than an IndexError
    # inside the handler that was reporting it.
    assert first_line(AssertionError()) == "" and first_line(RuntimeError("  \n ")) == ""
