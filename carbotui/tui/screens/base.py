"""What every dashboard screen shares: the top bars, the body, the footer, `show()`,
the keys and the confirm-then-act step of its actions.

The App calls `show(snapshot)` on the active screen only when the data changed;
a screen that becomes active again (ScreenResume) shows the latest snapshot
itself. Screens never poll: data arrives, they draw it.

A screen is declared as `class XScreen(LiveScreen, title="X", main="#table")`: the
App mode (and nav bar key) is the title in lower case, `main` the widget that gets
the keyboard. Each key is one `Binding(key, action, description, id=...)`; what it
does (the footer tooltip, the palette's help line) is the docstring of its action
method, unless the Binding gives a tooltip itself.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, TypeVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input

from carbotui.admin.node import FleetSnapshot
from carbotui.tui import filters
from carbotui.tui.widgets.keyed_table import KeyedTable
from carbotui.tui.widgets.modals import ConfirmModal
from carbotui.tui.widgets.statusbar import NavBar, StatusBar

T = TypeVar("T")


def _tooltip(cls: type, binding: Binding) -> Binding:
    """`binding` with the docstring of its action as tooltip, if it has none."""
    action = getattr(cls, f"action_{binding.action}", None)
    if binding.tooltip or action is None or not action.__doc__:
        return binding
    first = inspect.cleandoc(action.__doc__).split("\n\n", 1)[0]
    return dataclasses.replace(binding, tooltip=" ".join(first.split()))


class LiveScreen(Screen):
    MODE = ""                 # the App mode name, also the nav bar key
    TITLE_TEXT = ""
    BINDING_GROUP_TITLE = ""
    MAIN = ""                 # selector of the widget that gets the keyboard

    def __init_subclass__(cls, title: str = "", main: str = "", **kwargs) -> None:
        if title:
            cls.TITLE_TEXT, cls.MODE = title, title.lower()
        if main:
            cls.MAIN = main
        if "BINDINGS" in cls.__dict__:     # before Textual merges them (super)
            cls.BINDINGS = cls.screen_bindings([_tooltip(cls, b) if isinstance(b, Binding)
                                                else b for b in cls.BINDINGS])
        super().__init_subclass__(**kwargs)

    @classmethod
    def screen_bindings(cls, own: list) -> list:
        """The screen's keys: its own BINDINGS, and those its kind of screen adds."""
        return own

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield NavBar(id="nav")
        with Vertical(id="body"):
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
        if self.MAIN:
            self.query_one(self.MAIN).focus()

    @property
    def table(self) -> KeyedTable:
        """The main table."""
        return self.query_one(self.MAIN, KeyedTable)

    def show(self, snapshot: FleetSnapshot) -> None:
        """Draw `snapshot`; called only when it differs from the previous one."""

    # -- actions ------------------------------------------------------------------------
    def selected(self, items: dict[str, T], table: KeyedTable | None = None,
                 missing: str = "") -> T | None:
        """The item of `items` under the cursor of `table` (the main one); None, saying
        `missing` as a warning when given, if there is none."""
        key = (table or self.table).selected_key
        item = items.get(key) if key else None
        if item is None and missing:
            self.notify(missing, severity="warning")
        return item

    def confirm(self, question: str, detail: str, yes: str,
                action: Callable[..., str], *args) -> None:
        """Ask `question` (ConfirmModal); on yes, run `action(*args)` in a thread."""
        def answered(ok: bool | None) -> None:
            if ok:
                self.app.run_action_in_thread(action, *args)

        self.app.push_screen(ConfirmModal(question, detail, yes=yes), answered)


class FilteredScreen(LiveScreen):
    """A screen with a `#filter` Input above its list: `/` opens it, Enter applies its
    terms, Escape clears them. The screen keeps `terms` and redraws itself in
    `refilter()`. FILTER_BY names the fields the filter knows (the tooltip of /),
    FILTER_EXAMPLE is a protocol for the box's placeholder."""

    FILTER_BY = "account: ip: proto:"
    FILTER_EXAMPLE = "imap"

    @classmethod
    def screen_bindings(cls, own: list) -> list:
        """/ first, escape last: `<mode>.filter`, `<mode>.clear_filter`."""
        return [Binding("slash", "filter", "Filter", id=f"{cls.MODE}.filter", key_display="/",
                        tooltip=f"Filter: words, or {cls.FILTER_BY}"),
                *own,
                Binding("escape", "clear_filter", "Clear filter", show=False,
                        id=f"{cls.MODE}.clear_filter")]

    def __init__(self):
        super().__init__()
        self.terms: list = []

    def compose_body(self) -> ComposeResult:
        yield Input(placeholder=f"filter: user03  ip:203.0.113  proto:{self.FILTER_EXAMPLE}"
                                "  (enter: apply)", id="filter", classes="filter")
        yield from self.compose_list()

    def compose_list(self) -> ComposeResult:
        """What the filter box is above."""
        yield from ()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False

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
