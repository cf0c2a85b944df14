"""Help: every key of every screen, with its binding id (for keymaps) and what it does."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss_help", "Close", id="help.close")]

    def __init__(self, bindings: list[tuple[str, Binding]], current: str):
        super().__init__(classes="modal")
        self.bindings_list = bindings
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help"):
            yield Static(Text.assemble(("Keys", "bold"), "  ↑↓ PgUp PgDn scroll · escape close · "
                                       "ctrl+p searches every action"), classes="title")
            yield DataTable(id="keys", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one("#keys", DataTable)
        table.add_column("Screen", key="group", width=11)
        table.add_column("Key", key="key", width=6)
        table.add_column("Action", key="description", width=17)
        table.add_column("Binding id", key="id", width=26)
        for group, b in self.bindings_list:
            key = b.key_display or self.app.get_key_display(b)
            table.add_row(group, Text(key, style="bold cyan"), b.description, b.id or "")
        table.focus()
        # Open at the keys of the screen the admin came from; global keys are above.
        for row, (group, _) in enumerate(self.bindings_list):
            if group == self.current:
                table.move_cursor(row=row, animate=False, scroll=False)
                self.call_after_refresh(table.scroll_to, y=row, animate=False)
                break

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
