"""`carbotui check`: the settings file as a worker loads it, then what a reload would meet.

    carbotui check [--config FILE] [--offline] [--keys]

First the file, through the very loader the workers use (every problem named by its dotted
key). Then the probes (``PROBES``), all at once, each bounded by the file's own timeouts, so
the whole check takes a few seconds even when nothing answers; nothing is started:

* LDAP: on every ``[ldap] url``, connect (TLS verified as the workers do), bind as
  ``lookup_bind_dn`` and as ``bind_dn``, read ``base``; then, on one server that answers,
  the node's own server entry and every virtual host certificate in LDAP (what the
  workers load on their next refresh). A server that cannot be reached is a warning when
  another answers and an error when none does; a refused bind, a certificate that fails
  verification or a missing base is an error wherever it happens.
* memcached: every ``[memcached] servers`` entry answers ``stats`` (the workers' client).
* certificates: the ``[tls]`` pair loads as the workers load it, the key matches, it is
  valid now and covers ``[node] name``; a virtual host's certificate covers its names.
  Less than 14 days left is a warning.
* listeners: ``[listen]`` against the sockets the running workers (their stats sockets
  under ``run_dir``; those started with this file when there are any) listen on, read
  with ss and /proc; SIGHUP does not rebind, so each difference is a warning that a restart is
  needed (a changed ``proxy_protocol`` flag is not seen). The same address for two kinds
  is an error.

Each problem is one line on stderr (``warning:`` in front when it does not fail the check);
the exit status is 1 when any line is an error, else 0 with one ``OK`` line on stdout.
``--offline`` checks the file only.
"""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from carbotui.core import certs
from carbotui.core import settings as config
from carbotui.core.settings import Settings


@dataclass(frozen=True)
class Line:
    """One finding of a probe: an error, a warning, or what was checked (for the OK line)."""
    text: str
    level: str = "error"               # error | warning | ok

    def __str__(self) -> str:
        return ("warning: " if self.level == "warning" else "") + self.text


def error(text: str) -> Line:
    return Line(text)


def warning(text: str) -> Line:
    return Line(text, "warning")


def checked(text: str) -> Line:
    return Line(text, "ok")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    text = text.splitlines()[0][:300]
    for noise in ("socket connection error while opening: ", "socket ssl wrapping error: "):
        text = text.replace(noise, "")            # ldap3's wrapping; the OS's words stay
    return text


# --- LDAP -----------------------------------------------------------------------------------

@dataclass
class _Server:
    url: str
    lines: list
    unreachable: str = ""              # why, when it could not be reached at all
    works: bool = False                # every bind and the base search succeeded


def _binds(s: Settings) -> list[tuple[str, str, object]]:
    """(key, DN, password reader) of each bind the programs make."""
    out = []
    if s.ldap_lookup_bind_dn:
        out.append(("ldap.lookup_bind_dn", s.ldap_lookup_bind_dn, s.ldap_lookup_password))
    if s.ldap_bind_dn and s.ldap_bind_dn != s.ldap_lookup_bind_dn:
        out.append(("ldap.bind_dn", s.ldap_bind_dn, s.ldap_password))
    return out or [("ldap", "", None)]           # anonymous, as the directory would bind


def _probe_server(s: Settings, url: str) -> _Server:
    import ldap3
    from ldap3.core.exceptions import LDAPBindError, LDAPException, LDAPOperationResult

    from carbotui.backends import directory

    result = _Server(url, [])
    try:
        server = directory.make_server(s, url)
    except LDAPException as exc:                     # ldap3.Tls reads ca_file at once
        result.lines.append(error(f"ldap.ca_file {s.ldap_ca_file}: {_reason(exc)}"))
        return result
    for key, dn, password in _binds(s):
        who = f"{key} {dn}" if dn else "anonymous bind"
        try:
            conn = directory.connect(s, server, dn, password, read_only=True)
        except config.ConfigError as exc:
            result.lines += [error(p) for p in exc.problems]
            continue
        except LDAPOperationResult as exc:            # invalidCredentials and the like
            result.lines.append(error(f"{who}: {url} refused the bind "
                                      f"({exc.description or exc.result})"))
            continue
        except LDAPBindError as exc:
            result.lines.append(error(f"{who}: {url} refused the bind ({_reason(exc)})"))
            continue
        except ssl.SSLError as exc:
            hint = f"ldap.ca_file {s.ldap_ca_file}" if s.ldap_ca_file else \
                "the system CAs (ldap.ca_file unset)"
            result.lines.append(error(f"ldap.url {url}: TLS verification failed against "
                                      f"{hint}: {_reason(exc)}"))
            return result
        except (LDAPException, OSError) as exc:
            if isinstance(exc, OSError):
                result.unreachable = _reason(exc)
                return result
            result.lines.append(error(f"ldap.url {url}: {_reason(exc)}"))
            return result
        except Exception as exc:  # noqa: BLE001 - ldap3 lets garbled answers out as KeyError
            result.lines.append(error(f"ldap.url {url}: not an LDAP answer "
                                      f"({type(exc).__name__}: {_reason(exc)})"))
            return result
        try:
            conn.search(s.ldap_base, "(objectClass=*)", ldap3.BASE, attributes=["1.1"])
        except LDAPException as exc:
            result.lines.append(error(f"ldap.base {s.ldap_base}: {who} cannot read it "
                                      f"at {url} ({_reason(exc)})"))
        except OSError as exc:
            result.unreachable = _reason(exc)
        finally:
            try:
                conn.unbind()
            except Exception:  # noqa: BLE001 - only closing
                pass
    result.works = not result.lines and not result.unreachable
    return result


def _cleartext(s: Settings, url: str) -> bool:
    if not url.lower().startswith("ldap://") or s.ldap_start_tls:
        return False
    host = (urlsplit(url).hostname or "").lower()
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def probe_ldap(s: Settings) -> list[Line]:
    """Every url, every bind, the base; then, on one that answers, what the workers read."""
    results: list[_Server] = [None] * len(s.ldap_urls)   # type: ignore[list-item]

    def run(i: int, url: str) -> None:
        try:
            results[i] = _probe_server(s, url)
        except Exception as exc:  # noqa: BLE001 - one line, not a trace
            results[i] = _Server(url, [error(f"ldap.url {url}: {type(exc).__name__}: "
                                             f"{_reason(exc)}")])
    threads = [threading.Thread(target=run, args=(i, url), daemon=True)
               for i, url in enumerate(s.ldap_urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out: list[Line] = []
    reached = [r for r in results if not r.unreachable]
    for r in results:
        out += r.lines
        if r.unreachable:
            text = f"ldap.url {r.url}: unreachable ({r.unreachable})"
            out.append(warning(text + "; the other servers answer") if reached else error(text))
    for url in s.ldap_urls:
        if _cleartext(s, url):
            out.append(warning(f"ldap.url {url}: not loopback, and neither ldaps:// nor "
                               "start_tls: the bind password crosses the network in clear"))
    working = [r.url for r in results if r.works]
    if working:
        out.append(checked(f"LDAP {len(working)}/{len(results)}"))
        out += _directory_contents(dataclasses.replace(
            s, ldap_urls=config.LdapUrls(working[:1])))
    return out


def _directory_contents(s: Settings) -> list[Line]:
    """What a worker reads on its next refresh: its server entry, the virtual hosts."""
    from carbotui.backends.directory import Directory, DirectoryUnavailable

    d = Directory(s)
    out: list[Line] = []
    try:
        servers, domains = d.servers(), d.domains()
    except DirectoryUnavailable as exc:
        return [error(f"ldap: the lookup bind cannot read the directory: {_reason(exc)}")]
    finally:
        d.close()
    if s.node_name not in servers:
        out.append(warning(f"node.name {s.node_name}: no zimbraServer entry with that "
                           "zimbraServiceHostname; the workers use mail mode redirect"))
    count = 0
    for domain in domains:
        if not (domain.certificate_pem and domain.virtual_hostnames):
            continue
        count += 1
        what = f"domain {domain.name}: zimbraSSLCertificate"
        out += _pem_pair(what, domain.certificate_pem.encode(),
                         domain.private_key_pem.encode() if domain.private_key_pem else None,
                         domain.virtual_hostnames)
    if count:
        out.append(checked(f"{count} virtual host certificate{'s' * (count != 1)}"))
    return out


# --- certificates ---------------------------------------------------------------------------

def _pem_pair(what: str, cert_pem: bytes, key_pem: bytes | None, names) -> list[Line]:
    try:
        cert = certs.load_cert(cert_pem)
    except ValueError as exc:
        return [error(f"{what}: not a PEM certificate ({_reason(exc)})")]
    key = None
    if key_pem is None:
        return [error(f"{what}: no private key (zimbraSSLPrivateKey) to go with it")]
    try:
        key = certs.load_key(key_pem)
    except (ValueError, TypeError) as exc:
        return [error(f"{what}: the private key cannot be read ({_reason(exc)})")]
    out = [Line(f"{what}: {text}", "error" if bad else "warning")
           for bad, text in certs.pair_problems(cert, key, names)]
    if not out:
        out += _ssl_loads(what, cert_pem, key_pem)
    return out


def _ssl_loads(what: str, cert_pem: bytes, key_pem: bytes) -> list[Line]:
    """What the worker's ssl.SSLContext.load_cert_chain says of the pair (files only)."""
    with tempfile.TemporaryDirectory(prefix="carbotui-check-") as tmp:
        crt, key = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
        crt.write_bytes(cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(crt, key)
        except (ssl.SSLError, OSError) as exc:
            return [error(f"{what}: the TLS library refuses the pair ({_reason(exc)})")]
    return []


def probe_certificates(s: Settings) -> list[Line]:
    """The [tls] pair, as the workers load it, for [node] name."""
    try:
        cert_pem = s.tls_certificate.read_bytes()
    except OSError as exc:
        return [error(f"tls.certificate: cannot read {s.tls_certificate}: {exc.strerror}")]
    try:
        key_pem = s.tls_private_key.read_bytes()
    except OSError as exc:
        return [error(f"tls.private_key: cannot read {s.tls_private_key}: {exc.strerror}")]
    out = _pem_pair(f"tls.certificate {s.tls_certificate}", cert_pem, key_pem, [s.node_name])
    return out or [checked("the [tls] certificate")]


# --- memcached ------------------------------------------------------------------------------

def probe_memcached(s: Settings) -> list[Line]:
    from carbotui.backends.memcache import Memcache

    if not s.memcached_servers:
        return [warning("memcached.servers: none: routes are not cached and logins are not "
                        "throttled")]

    class Keep(logging.Handler):             # the client's own words for a failure
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    logger = logging.getLogger("carbotui.backends.memcache")
    keep, propagate = Keep(), logger.propagate
    logger.addHandler(keep)
    logger.propagate = False

    async def ask(endpoint):
        cache = Memcache((endpoint,), timeout=s.memcached_timeout, reconnect=s.memcached_reconnect)
        try:
            return endpoint, bool(await cache.stats())
        finally:
            await cache.close()

    async def ask_all():
        return await asyncio.gather(*(ask(e) for e in s.memcached_servers))
    try:
        answers = asyncio.run(ask_all())
    finally:
        logger.removeHandler(keep)
        logger.propagate = propagate
    out, ok = [], 0
    for endpoint, answered in answers:
        if answered:
            ok += 1
            continue
        why = next((m.split("unavailable (", 1)[1].split("); ", 1)[0]
                    for m in keep.messages if str(endpoint) in m and "unavailable (" in m),
                   f"no answer within {s.memcached_timeout:g}s")
        out.append(error(f"memcached.servers {endpoint}: unreachable ({why})"))
    return out + ([checked(f"memcached {ok}/{len(answers)}")] if ok else [])


# --- listeners ------------------------------------------------------------------------------

def listening_sockets() -> dict[str, tuple[str, int]] | None:
    """inode -> (address, port) of every listening TCP socket of this network namespace,
    from ``ss -Hltne`` (iproute2): netlink, with the state filtered in the kernel, so it
    stays fast with 100,000 connections open (reading /proc/net/tcp took 9 s then).
    None when ss cannot be run."""
    try:
        p = subprocess.run(["ss", "-Hltne"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if p.returncode:
        return None
    out = {}
    for row in p.stdout.splitlines():
        f = row.split()
        inode = next((x[4:] for x in f if x.startswith("ino:")), "")
        if len(f) < 5 or not inode:
            continue
        host, _, port = f[3].rpartition(":")
        host = host.strip("[]").split("%", 1)[0]          # "127.0.0.1%lo", "[::1]"
        try:
            out[inode] = (str(ipaddress.ip_address("::" if host == "*" else host)), int(port))
        except ValueError:
            continue
    return out


def listening(pid: int, sockets: dict[str, tuple[str, int]]) -> set[tuple[str, int]]:
    """The TCP addresses process ``pid`` listens on, among ``sockets``
    (``listening_sockets()``). Raises OSError when its descriptors are not ours to see."""
    fd_dir = f"/proc/{pid}/fd"
    out = set()
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue                      # closed meanwhile
        if link.startswith("socket:[") and link[8:-1] in sockets:
            out.add(sockets[link[8:-1]])
    return out


def _config_of(pid: int) -> Path | None:
    """The settings file process ``pid`` was started with (its ``--config``), or None."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in argv]
    if "--config" not in args[:-1]:
        return None
    return (cwd / args[args.index("--config") + 1]).resolve()


def _key(host: str, port: int) -> tuple[str, int]:
    return ("127.0.0.1" if host == "localhost" else str(ipaddress.ip_address(host)), port)


def probe_listeners(s: Settings) -> list[Line]:
    from carbotui.backends.worker_sockets import read_stats_json, stats_sockets

    out = []
    wanted: dict[tuple[str, int], str] = {}
    for kind, endpoints in s.listen.items():
        for e in endpoints:
            key = _key(e.host, e.port)
            if key in wanted and wanted[key] != kind:
                out.append(error(f"listen.{kind}: {e} is also listed for {wanted[key]}"))
            wanted.setdefault(key, kind)
    workers = []
    for path in stats_sockets(s.run_dir):
        try:
            doc = read_stats_json(path, timeout=1.0)
            workers.append((str(doc["worker"]), int(doc["pid"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue                      # a stale socket: that worker is not running
    if not workers:
        return out + [checked("no worker running (listeners not compared)")]
    # The workers that run this very file, when some do (another program may share the
    # run_dir); else every worker found: the file is a candidate for them.
    same = [w for w in workers if _config_of(w[1]) == s.path]
    workers = same or workers
    sockets = listening_sockets()
    if sockets is None:
        return out + [warning("listen: `ss -Hltne` (iproute2) cannot be run; the running "
                              "workers' listeners are not compared")]
    extra = {_key(s.metrics_listen.host, s.metrics_listen.port)} if s.metrics_listen else set()
    added: dict[tuple[str, int], list[str]] = {}
    gone: dict[tuple[str, int], list[str]] = {}
    for name, pid in workers:
        try:
            bound = listening(pid, sockets)
        except OSError as exc:
            out.append(warning(f"listen: cannot see the sockets of {name} (pid {pid}: "
                               f"{exc.strerror}); run check as root or as the workers' user"))
            continue
        for key in wanted.keys() - bound:
            added.setdefault(key, []).append(name)
        for key in bound - wanted.keys() - extra:
            gone.setdefault(key, []).append(name)

    def where(key):
        host, port = key
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    for key, names in sorted(added.items()):
        out.append(warning(f"listen.{wanted[key]}: {where(key)} is not listened on by the "
                           f"running {', '.join(names)}: it needs a restart of the workers "
                           "(SIGHUP does not bind)"))
    for key, names in sorted(gone.items()):
        out.append(warning(f"listen: {where(key)} is listened on by the running "
                           f"{', '.join(names)} but is not in the file: it stays open until "
                           "the workers restart"))
    return out + [checked(f"listeners of {len(workers)} worker{'s' * (len(workers) != 1)}")]


# --- the command ----------------------------------------------------------------------------

def _toml(value) -> str:
    """A default as it would be written in the file."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(str(x)) for x in value) + "]"
    if value is None or isinstance(value, (str, os.PathLike)) and value != "(required)":
        return f'"{value or ""}"'
    return str(value)


PROBES = (probe_ldap, probe_memcached, probe_certificates, probe_listeners)


def deadline(s: Settings) -> float:
    """Seconds the probes may take together (they run at once): an LDAP server costs at
    most a connect, a TLS handshake, a bind and a search per DN, each ``ldap.timeout``."""
    return 4 * len(_binds(s)) * max(1.0, s.ldap_timeout) + s.memcached_timeout + 2


def run_probes(s: Settings, probes=PROBES, within: float | None = None) -> list[Line]:
    """Every probe at once, in threads; one that has not answered within ``within``
    (default: ``deadline``) is one line; its thread is left behind (daemon)."""
    within = deadline(s) if within is None else within
    results: dict[int, list[Line]] = {}

    def run(i, probe):
        try:
            results[i] = list(probe(s))
        except Exception as exc:  # noqa: BLE001 - a probe's own bug is one line, not a trace
            results[i] = [error(f"{probe.__name__}: {type(exc).__name__}: {_reason(exc)}")]
    threads = [threading.Thread(target=run, args=(i, p), daemon=True)
               for i, p in enumerate(probes)]
    for t in threads:
        t.start()
    end = time.monotonic() + within
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    out = []
    for i, probe in enumerate(probes):
        out += results.get(i, [error(f"{probe.__name__}: no answer within {within:g}s")])
    return list(dict.fromkeys(out))          # a password file unreadable for every url: once


_TOML_ERROR = re.compile(r"(?P<path>.+): not valid TOML: (?P<what>.*) "
                         r"\(at line (?P<line>\d+), column (?P<column>\d+)\)")


def _located(config_path: str, text: str) -> str:
    """``FILE: problem``; a TOML syntax error as ``FILE:LINE:COLUMN: ...`` (of the file it
    is in, which may be an included one)."""
    m = _TOML_ERROR.fullmatch(text)
    if m:
        return f"{m['path']}:{m['line']}:{m['column']}: not valid TOML: {m['what']}"
    return f"{config_path}: {text}"


def main(config_path: str, argv: list[str]) -> int:
    argv = list(argv)
    while "--config" in argv[:-1]:                  # anywhere after `check`
        i = argv.index("--config")
        config_path = argv[i + 1]
        del argv[i:i + 2]
    if argv == ["--keys"]:
        for key, kind, default, mirrors in config.keys():
            print(f"{key:32} {kind:24} {_toml(default):28} {mirrors}".rstrip())
        return 0
    if argv not in ([], ["--offline"]):
        print("usage: carbotui check [--config FILE] [--offline] [--keys]", file=sys.stderr)
        return 2
    try:
        settings = config.load(config_path)
    except config.ConfigError as exc:
        lines = [error(p) for p in exc.problems]
        settings = None
    else:
        lines = [] if argv == ["--offline"] else run_probes(settings)
    for line in lines:
        if line.level != "ok":
            print(_located(config_path, str(line)), file=sys.stderr)
    if settings is None or any(line.level == "error" for line in lines):
        return 1
    notes = [line.text for line in lines if line.level == "ok"]
    warnings = sum(line.level == "warning" for line in lines)
    tail = "".join(f"; {n}" for n in notes) + \
        (f"; {warnings} warning{'s' * (warnings != 1)}" if warnings else "")
    print(f"{config_path}: OK (node {settings.node_name}, id {settings.node_id}{tail})")
    return 0
