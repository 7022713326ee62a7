"""Names, labels and errors shown as text, never as markup or terminal control.

A sweep value `[/]` used to crash `kdtui submit` (Rich read it as a closing
tag) and `[bold red]` in a label restyled the line; an ESC in a name could
drive the terminal. Everything the CLI and the app show of user or stored
text goes through here: `InertConsole` reads no markup or emoji and escapes
control characters in every string it renders; `text` builds a styled Rich
Text whose content is escaped the same way.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from engine.core.inert import printable


class InertConsole(Console):
    """A Rich console for which every str is plain text: no markup, no :emoji: codes, no
    highlighting (its regexes are quadratic: a 100,000-character name took 86 s to print),
    and control characters shown as escapes. Style comes from `text()` / `Text` pieces."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("emoji", False)
        kwargs.setdefault("highlight", False)
        super().__init__(**kwargs)

    def render_str(self, text: str, **kwargs) -> Text:
        kwargs["markup"] = kwargs["emoji"] = kwargs["highlight"] = False
        return super().render_str(printable(text, keep="\n"), **kwargs)


def text(*parts: str | tuple[str, str], style: str = "") -> Text:
    """Rich Text from plain pieces: `text("error: ", style="bold red")`,
    `text(("error:", "bold red"), " ", message)`. Each piece's content is escaped."""
    out = Text(style=style)
    for part in parts:
        if isinstance(part, tuple):
            out.append(printable(part[0]), style=part[1])
        else:
            out.append(printable(part))
    return out
