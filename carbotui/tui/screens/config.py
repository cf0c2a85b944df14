"""Config: mail mode, domains (virtual hostnames, VIPs, certificates), applied per worker.

Every change asks first, is validated and written to LDAP by the Source, and
the "Applied" table shows each worker picking it up: the mail mode and virtual
hostnames it reports running equal the directory's, since the time shown.
"""
from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from carbotui.admin.changes import AdminError, MAIL_MODES, validate_fqdn, validate_ip
from carbotui.admin.node import DomainView, FleetSnapshot, config_applied
from carbotui.tui import format as fmt
from carbotui.tui.screens.base import LiveScreen
from carbotui.tui.widgets.keyed_table import KeyedTable
from carbotui.tui.widgets.modals import ChoiceModal, PromptModal, VhostModal

DOMAIN_COLUMNS = [("domain", "Domain", 10), ("vhosts", "Virtual hostnames", 24),
                  ("vips", "VIP", 11), ("expires", "Cert expires", 12), ("days", "Days", 5),
                  ("names", "Certificate names", 30)]
APPLIED_COLUMNS = [("worker", "Worker", 9), ("status", "Config", 12), ("at", "Applied", 8),
                   ("version", "Version", 12)]


APPLIED_LABELS = {"applied": ("✓ applied", "green"), "pending": ("… pending", "bold yellow"),
                  "error": ("✖ LDAP error", "bold red"), "unknown": ("not reported", "dim")}


def _error_of(check, value: str) -> str:
    try:
        check(value)
    except AdminError as exc:
        return str(exc)
    return ""


class ConfigScreen(LiveScreen, title="Config", main="#domains"):
    BINDINGS = [Binding("m", "mail_mode", "Mail mode", id="config.mail_mode"),
                Binding("a", "add_vhost", "Add vhost", id="config.add_vhost"),
                Binding("d", "remove_vhost", "Remove vhost", id="config.remove_vhost"),
                Binding("i", "set_vip", "Set VIP", id="config.set_vip")]

    def __init__(self):
        super().__init__()
        self.domains: dict[str, DomainView] = {}
        self.mail_mode = ""

    def compose_body(self) -> ComposeResult:
        yield Static(id="mode", classes="summary")
        yield KeyedTable(DOMAIN_COLUMNS, id="domains", sort_column="domain")
        yield Static(id="detail", classes="detail")
        yield KeyedTable(APPLIED_COLUMNS, id="applied", sort_column="worker")

    def show(self, snapshot: FleetSnapshot) -> None:
        d = snapshot.directory
        mode = Text(no_wrap=True, overflow="ellipsis")
        if d is None:
            mode.append(" directory not read yet (LDAP unreachable?)", style="bold red")
            self.query_one("#mode", Static).update(mode)
            return
        self.mail_mode = d.mail_mode
        mode.append(" Mail mode ", style="dim").append(d.mail_mode or "(unset)", style="bold")
        mode.append("  port 80: " + ("301 to https" if d.mail_mode == "redirect"
                                     else "error, https only"), style="dim")
        mode.append(f"  · {d.server}", style="dim")
        self.query_one("#mode", Static).update(mode)

        self.domains = {v.name: v for v in d.domains}
        rows = {}
        for v in d.domains:
            c = v.certificate
            flag = c.flag if c else ""
            rows[v.name] = (
                v.name, ", ".join(v.virtual_hostnames) or Text("-", style="dim"),
                ", ".join(v.virtual_ips) or Text("-", style="dim"),
                Text(c.not_after if c else (v.certificate_error[:12] or "none"),
                     style=fmt.CERT_STYLES.get(flag, "dim")),
                fmt.num(c.days_left, style=fmt.CERT_STYLES.get(flag, "")) if c else
                fmt.num(None),
                ", ".join(c.names) if c else "")
        self.table.sync(rows)
        self._detail()

        rows = {}
        for p in snapshot.workers:
            s = p.stats
            state = config_applied(s, d)
            label, style = APPLIED_LABELS[state]
            if s is None:
                label, style = "no stats", "red"
            at = fmt.clock(s.config_applied_at) if s and s.config_applied_at else "-"
            rows[p.name] = (p.short, Text(label, style=style), at,
                            (s.config_version if s else "") or "-")
        self.query_one("#applied", KeyedTable).sync(rows)

    @on(DataTable.RowHighlighted, "#domains")
    def _highlighted(self, _event) -> None:
        self._detail()

    def _detail(self) -> None:
        v = self.selected(self.domains)
        text = Text(no_wrap=True, overflow="ellipsis")
        if v is None:
            self.query_one("#detail", Static).update(text)
            return
        c = v.certificate
        if c is None:
            text.append(f" {v.name}: no certificate of its own (the node default serves it)",
                        style="dim")
        else:
            style = fmt.CERT_STYLES[c.flag]
            text.append(f" {v.name}: ", style="bold").append(c.subject)
            text.append(f" · until {c.not_after} ").append(
                {"ok": f"({c.days_left} days)", "expiring": f"⚠ EXPIRES IN {c.days_left} DAYS",
                 "expired": "✖ EXPIRED"}[c.flag], style=style)
        self.query_one("#detail", Static).update(text)

    # -- actions --------------------------------------------------------------------
    def action_mail_mode(self) -> None:
        """Switch port 80 between https (error) and redirect (301)"""
        if not self.mail_mode and self.app.snapshot is None:
            return
        new = MAIL_MODES[1] if self.mail_mode == MAIL_MODES[0] else MAIL_MODES[0]
        what = {"https": "plain HTTP on port 80 gets an error; clients must use https",
                "redirect": "plain HTTP on port 80 gets a 301 to the same URL over https"}[new]
        self.confirm(f"Switch the mail mode from {self.mail_mode or '(unset)'} to {new}?",
                     f"{what}. Written to LDAP; every worker applies it without a restart.",
                     f"Switch to {new}", self.app.source.set_mail_mode, new)

    def action_add_vhost(self) -> None:
        """Add a virtual hostname with a generated or imported certificate"""
        if not self.domains:
            self.notify("no domains known yet", severity="warning")
            return
        selected = self.selected(self.domains)
        domain = selected.name if selected else sorted(self.domains)[0]

        def answered(request) -> None:
            if request is not None:
                cert_path, key_path = request.certificate or ("", "")
                self.app.run_action_in_thread(
                    self.app.source.add_vhost, request.domain, request.fqdn,
                    generate=request.certificate is None, cert_path=cert_path,
                    key_path=key_path)

        taken = {n: d.name for d in self.domains.values() for n in d.virtual_hostnames}

        def check(value: str) -> str:
            error = _error_of(validate_fqdn, value)
            if not error and validate_fqdn(value) in taken:
                error = f"{value} is already a virtual hostname of {taken[validate_fqdn(value)]}"
            return error

        self.app.push_screen(VhostModal(sorted(self.domains), domain, check), answered)

    def action_remove_vhost(self) -> None:
        """Remove a virtual hostname of the selected domain"""
        v = self.selected(self.domains)
        if v is None or not v.virtual_hostnames:
            self.notify("the selected domain has no virtual hostname", severity="warning")
            return

        def confirm(fqdn: str | None) -> None:
            if fqdn:
                self.confirm(f"Remove {fqdn} from {v.name}?",
                             "Clients using this name get the node's default certificate "
                             "afterwards.", "Remove", self.app.source.remove_vhost, v.name, fqdn)

        if len(v.virtual_hostnames) == 1:
            confirm(v.virtual_hostnames[0])
        else:
            self.app.push_screen(ChoiceModal(f"Remove which virtual hostname of {v.name}?",
                                             list(v.virtual_hostnames)), confirm)

    def action_set_vip(self) -> None:
        """Set the virtual IP address of the selected domain"""
        v = self.selected(self.domains, missing="no domain selected")
        if v is None:
            return

        def answered(ip: str | None) -> None:
            if ip:
                self.app.run_action_in_thread(self.app.source.set_vip, v.name, ip)

        self.app.push_screen(PromptModal(
            f"Virtual IP address of {v.name}", placeholder="127.0.0.3",
            value=", ".join(v.virtual_ips), validate=lambda x: _error_of(validate_ip, x),
            hint="POP/IMAP clients without SNI reaching this IP log in to this domain."),
            answered)
