"""What every dashboard screen shares: the top bars, the footer, and `show()`.

The App calls `show(snapshot)` on the active screen only when the data changed;
a screen that becomes active again (ScreenResume) shows the latest snapshot
itself. Screens never poll: data arrives, they draw it.
"""
from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Input

from carbotui.admin.node import FleetSnapshot
from carbotui.tui import filters
from carbotui.tui.widgets.statusbar import NavBar, StatusBar


class LiveScreen(Screen):
    MODE = ""                 # the App mode name, also the nav bar key
    TITLE_TEXT = ""
    BINDING_GROUP_TITLE = ""

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield NavBar(id="nav")
        yield from self.compose_body()
        yield Footer(show_command_palette=True)

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_screen_resume(self) -> None:
        self.app.show_chrome(self)
        if self.app.snapshot is not None:
            self.show(self.app.snapshot)
        self.focus_main()

    def on_resize(self) -> None:
        self.query_one(NavBar).show(self.MODE, self.size.width)

    def focus_main(self) -> None:
        """Give the keyboard to the screen's main widget (its table)."""

    def show(self, snapshot: FleetSnapshot) -> None:
        """Draw `snapshot`; called only when it differs from the previous one."""


class FilteredScreen(LiveScreen):
    """A screen with a `#filter` Input: `/` opens it, Enter applies its terms, Escape
    clears them. The screen keeps `terms` and redraws itself in `refilter()`."""

    def __init__(self):
        super().__init__()
        self.terms: list = []

    def refilter(self) -> None:
        """Draw again with the current `terms`."""

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Submitted, "#filter")
    def apply_filter(self, event: Input.Submitted) -> None:
        self.terms = filters.parse(event.value)
        event.input.display = bool(event.value.strip())
        self.focus_main()
        self.refilter()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.terms = []
        self.focus_main()
        self.refilter()
