"""A DataTable updated by row key: changed cells only, cursor stays on its row.

`sync(rows)` makes the table hold exactly `rows` ({key: cells}) in the current
sort order. Unchanged rows are not touched, so a refresh without new data
draws nothing; removing the row under the cursor moves it to a neighbour
rather than to the top (DataTable.clear() would reset cursor and scroll).

A `str` cell is shown as plain text: DataTable would parse it as Rich markup,
and cells hold what clients chose (account names, block reasons), where `[/x]`
raised MarkupError and `[link=...]` drew a link (security review M5).
"""
from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from carbotui.tui.format import sort_key


def _plain(cell):
    """A str cell as Text, styled as DataTable styles a str (one line, no wrap)."""
    return Text(cell, no_wrap=True, end="") if isinstance(cell, str) else cell


class KeyedTable(DataTable):
    def __init__(self, columns: list[tuple[str, str, int | None]], *, id: str | None = None,
                 sort_column: str | None = None, reverse: bool = False):
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.spec = columns
        self.sort_column = sort_column
        self.reverse = reverse
        self._cells: dict[str, tuple] = {}
        self.column_keys = [key for key, _, _ in columns]

    def on_mount(self) -> None:
        for key, label, width in self.spec:
            self.add_column(label, key=key, width=width)

    @property
    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:               # noqa: BLE001 - cursor outside a shrinking table
            return None

    def sync(self, rows: dict[str, tuple]) -> bool:
        """Show exactly `rows`; returns True when anything changed on screen."""
        selected = self.selected_key
        stale = [k for k in self._cells if k not in rows]
        changed = bool(stale)
        with self.app.batch_update():
            if stale and selected in stale:
                selected = self._neighbour(selected, rows)
            for key in stale:
                self.remove_row(key)
                del self._cells[key]
            for key, cells in rows.items():
                old = self._cells.get(key)
                if old is None:
                    self.add_row(*map(_plain, cells), key=key)
                    changed = True
                elif old != cells:
                    for column, new, before in zip(self.column_keys, cells, old):
                        if new != before:
                            self.update_cell(key, column, _plain(new))
                    changed = True
                self._cells[key] = cells
            if changed:
                self._sort()
                self._restore_cursor(selected)
        return changed

    def _neighbour(self, key: str, rows: dict) -> str | None:
        """The row that takes the place of a removed one: the next one still present."""
        order = [k.value for k in self._ordered_keys()]
        if key not in order:
            return None
        index = order.index(key)
        for k in order[index + 1:] + order[:index][::-1]:
            if k in rows:
                return k
        return None

    def _ordered_keys(self):
        return [row.key for row in self.ordered_rows]

    def _sort(self) -> None:
        if self.sort_column and self.row_count:
            self.sort(self.sort_column, key=sort_key, reverse=self.reverse)

    def _restore_cursor(self, key: str | None) -> None:
        if key is None or key not in self._cells:
            return
        row = self.get_row_index(key)
        if row != self.cursor_row:
            self.move_cursor(row=row, animate=False, scroll=False)

    def set_sort(self, column: str, reverse: bool) -> None:
        selected = self.selected_key
        self.sort_column, self.reverse = column, reverse
        self._sort()
        self._restore_cursor(selected)

    def cells(self, key: str) -> tuple | None:
        return self._cells.get(key)
