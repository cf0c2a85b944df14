"""Modal dialogs: confirm, one-line prompt, virtual hostname form, IP block form.

Each returns its result through dismiss() to the push_screen callback, and
every key works without a mouse: enter confirms, escape cancels. Their texts
are never parsed as markup: questions quote accounts and block reasons.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import (Button, Input, Label, OptionList, RadioButton, RadioSet, Select,
                             Static)


class ConfirmModal(ModalScreen[bool]):
    BINDINGS = [Binding("y,enter", "answer(True)", "Yes", id="confirm.yes"),
                Binding("n,escape", "answer(False)", "No", id="confirm.no")]

    def __init__(self, question: str, detail: str = "", yes: str = "Yes"):
        super().__init__(classes="modal")
        self.question, self.detail, self.yes = question, detail, yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="title", markup=False)
            if self.detail:
                yield Static(self.detail, classes="detail", markup=False)
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant="warning")
                yield Button("Cancel (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class PromptModal(ModalScreen[str | None]):
    """One line of input, checked by `validate` (returns an error or "") before closing."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="prompt.cancel")]

    def __init__(self, title: str, placeholder: str = "", value: str = "",
                 validate: Callable[[str], str] | None = None, hint: str = ""):
        super().__init__(classes="modal")
        self.title_text, self.placeholder, self.value = title, placeholder, value
        self.validate = validate or (lambda _v: "")
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="title", markup=False)
            yield Input(value=self.value, placeholder=self.placeholder, id="value")
            yield Static(self.hint, id="error", classes="hint", markup=False)

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        error = self.validate(value)
        if error:
            self.query_one("#error", Static).update(Text(error, style="bold red"))
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class VhostRequest:
    domain: str
    fqdn: str
    certificate: tuple[str, str] | None = None   # (cert file, key file); None: generate one


class VhostModal(ModalScreen[VhostRequest | None]):
    """Add a virtual hostname: domain, FQDN, and a generated or imported certificate."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="vhost.cancel"),
                Binding("ctrl+s", "submit", "Add", id="vhost.submit")]

    def __init__(self, domains: list[str], domain: str,
                 validate_fqdn: Callable[[str], str]):
        super().__init__(classes="modal")
        self.domains, self.domain = domains, domain
        self.validate_fqdn = validate_fqdn

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label("Add a virtual hostname", classes="title")
            yield Select([(d, d) for d in self.domains], value=self.domain, allow_blank=False,
                         id="domain")
            yield Input(placeholder="virtual hostname, e.g. webmail.corp.test", id="fqdn")
            with RadioSet(id="source"):
                yield RadioButton("Generate a certificate from the node CA", value=True,
                                  id="generate")
                yield RadioButton("Import PEM files", id="import")
            yield Input(placeholder="certificate PEM path", id="cert", disabled=True)
            yield Input(placeholder="private key PEM path", id="key", disabled=True)
            yield Static("enter: next field · ctrl+s: add · escape: cancel", id="error",
                         classes="hint")

    def on_mount(self) -> None:
        self.query_one("#fqdn", Input).focus()

    @on(RadioSet.Changed)
    def source_changed(self, event: RadioSet.Changed) -> None:
        importing = event.pressed.id == "import"
        for widget_id in ("#cert", "#key"):
            self.query_one(widget_id, Input).disabled = not importing

    @on(Input.Submitted)
    def next_field(self, event: Input.Submitted) -> None:
        if event.input.id == "key" or (event.input.id == "fqdn" and self._generate()):
            self.action_submit()
        else:
            self.focus_next()

    def _generate(self) -> bool:
        return self.query_one("#generate", RadioButton).value

    def action_submit(self) -> None:
        fqdn = self.query_one("#fqdn", Input).value.strip()
        error = self.validate_fqdn(fqdn)
        cert = self.query_one("#cert", Input).value.strip()
        key = self.query_one("#key", Input).value.strip()
        if not error and not self._generate() and not (cert and key):
            error = "give both the certificate and the key file"
        if error:
            self.query_one("#error", Static).update(Text(error, style="bold red"))
            return
        domain = self.query_one("#domain", Select).value
        self.dismiss(VhostRequest(domain=str(domain), fqdn=fqdn,
                                  certificate=None if self._generate() else (cert, key)))

    def action_cancel(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class BlockRequest:
    ip: str
    duration: str                      # as typed: 3600, 90s, 15m, 2h, 7d
    reason: str


class BlockModal(ModalScreen[BlockRequest | None]):
    """Block an IP on every node: address, duration, reason. `check(ip, duration)`
    returns what is wrong ("" when fine); the dialog stays open until it is fine."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="block.cancel"),
                Binding("ctrl+s", "submit", "Block", id="block.submit")]

    def __init__(self, check: Callable[[str, str], str], ip: str = "", duration: str = "1h",
                 reason: str = "", title: str = "Block an IP address on every node"):
        super().__init__(classes="modal")
        self.check = check
        self.ip, self.duration, self.reason, self.title_text = ip, duration, reason, title

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(self.title_text, classes="title", markup=False)
            yield Input(value=self.ip, placeholder="IP address, e.g. 203.0.113.5 or 2001:db8::7",
                        id="ip")
            yield Input(value=self.duration, placeholder="duration: 3600, 90s, 15m, 2h, 7d "
                        "(1 s to 30 days)", id="duration")
            yield Input(value=self.reason, placeholder="reason (shown in the block list)",
                        id="reason")
            yield Static("enter: next field · ctrl+s or enter on the reason: block · "
                         "escape: cancel", id="error", classes="hint")

    def on_mount(self) -> None:
        self.query_one("#duration" if self.ip else "#ip", Input).focus()

    @on(Input.Submitted)
    def next_field(self, event: Input.Submitted) -> None:
        if event.input.id == "reason":
            self.action_submit()
        else:
            self.focus_next()

    def action_submit(self) -> None:
        ip = self.query_one("#ip", Input).value.strip()
        duration = self.query_one("#duration", Input).value.strip()
        reason = self.query_one("#reason", Input).value.strip()
        error = self.check(ip, duration)
        if error:
            self.query_one("#error", Static).update(Text(error, style="bold red"))
            return
        self.dismiss(BlockRequest(ip=ip, duration=duration, reason=reason))

    def action_cancel(self) -> None:
        self.dismiss(None)


class ChoiceModal(ModalScreen[str | None]):
    """Pick one of a few values with the arrow keys (e.g. which vhost to remove)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="choice.cancel")]

    def __init__(self, title: str, choices: list[str]):
        super().__init__(classes="modal")
        self.title_text, self.choices = title, choices

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="title", markup=False)
            yield OptionList(*(Text(c) for c in self.choices), id="choices")
            yield Static("enter: choose · escape: cancel", classes="hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = 0
        options.focus()

    @on(OptionList.OptionSelected)
    def chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.choices[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)
