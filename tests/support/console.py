"""Console capture: the rich Console a task prints to, kept in memory as plain text.

Tasks print through the Console they are handed. A test hands them this one so that what
was printed can be read back and asserted on: no terminal, no colour codes, and a width the
test chooses (wide enough that a command line is not folded where the test looks for it).
"""

from __future__ import annotations

from io import StringIO

from rich.console import Console


class CapturedConsole(Console):
    """A Console writing plain text into memory; `text` is everything printed so far."""

    def __init__(self, width: int = 400) -> None:
        self.captured = StringIO()
        super().__init__(file=self.captured, width=width, color_system=None, force_terminal=False)

    @property
    def text(self) -> str:
        return self.captured.getvalue()


def printed(console: Console) -> str:
    """What a CapturedConsole got, for code that hands back only a Console (`stack.console`)."""
    assert isinstance(console, CapturedConsole), f"not a captured console: {console!r}"
    return console.text
