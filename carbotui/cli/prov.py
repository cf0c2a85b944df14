"""`carbotui prov …`: the part of `carbonio prov` the proxy uses.

    carbotui prov getAccount <name>       carbotui prov getDomain <domain>
    carbotui prov getServer <hostname>    carbotui prov flushCache <account>
    carbotui prov modifyServer <server> zimbraReverseProxyMailMode https|redirect
    carbotui prov modifyDomain <domain> +zimbraVirtualHostName <fqdn>
                               [--generate-cert | --cert FILE --key FILE]
    carbotui prov modifyDomain <domain> -zimbraVirtualHostName <fqdn>
    carbotui prov modifyDomain <domain> zimbraVirtualIPAddress <ip>
    carbotui prov modifyDomain <domain> [+|-]zimbraReverseProxyResponseHeaders 'Name: value' …
    carbotui prov modifyConfig [+|-]zimbraReverseProxyResponseHeaders 'Name: value' …
    carbotui prov modifyConfig carbonioReverseProxyResponseCSPHeader 'Content-Security-Policy: …'
    carbotui prov getConfig
    carbotui prov deployCertificate <fullchain.pem> <privkey.pem> <virtual hostname> …

Output is `attribute: value` lines, as zmprov prints them, so scripts can
grep it; errors go to stderr with a non-zero exit code (1: refused or failed,
2: usage). Changes are validated first (carbotui/admin/changes.py) and reach every
worker from LDAP without a restart. Attribute names are case-insensitive,
as in LDAP.
"""
from __future__ import annotations

import sys
from typing import Callable

from carbotui.core import settings as config
from carbotui.backends.directory import Directory, DirectoryUnavailable


class ProvError(Exception):
    pass


def _print_attrs(pairs: list[tuple[str, object]]) -> None:
    for name, value in pairs:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v not in ("", None):
                print(f"{name}: {v}")


def get_account(settings, directory: Directory, name: str) -> int:
    acct = directory.find_account(name)
    if acct is None:
        raise ProvError(f"account {name} not found")
    _print_attrs([("zimbraMailDeliveryAddress", acct.name), ("zimbraId", acct.zimbra_id),
                  ("zimbraMailHost", acct.mail_host), ("zimbraMailAlias", acct.aliases),
                  ("zimbraAccountStatus", acct.status)])
    return 0


def get_domain(settings, directory: Directory, name: str) -> int:
    for d in directory.domains():
        if d.name == name.lower():
            _print_attrs([("zimbraDomainName", d.name), ("zimbraId", d.zimbra_id),
                          ("zimbraVirtualHostname", d.virtual_hostnames),
                          ("zimbraVirtualIPAddress", d.virtual_ips),
                          ("zimbraSSLCertificate", "(set)" if d.certificate_pem else "")])
            _print_attrs(_header_attrs(*directory.response_headers().domains.get(d.name,
                                                                                 ((), ""))))
            return 0
    raise ProvError(f"domain {name} not found")


def get_server(settings, directory: Directory, name: str) -> int:
    server = directory.servers().get(name.lower())
    if server is None:
        raise ProvError(f"server {name} not found")
    from carbotui.backends.directory import PORT_ATTRIBUTES
    _print_attrs([("zimbraServiceHostname", server.hostname),
                  ("zimbraServiceEnabled", server.services),
                  ("zimbraReverseProxyLookupTarget", "TRUE" if server.lookup_target else "FALSE"),
                  ("zimbraReverseProxyMailMode", server.mail_mode),
                  *[(attr, server.ports[p]) for p, attr in PORT_ATTRIBUTES.items()],
                  ("address", server.address)])
    return 0


def flush_cache(settings, directory: Directory, name: str) -> int:
    from carbotui.admin.changes import AdminError, flush_routes
    try:
        account, deleted, checked = flush_routes(settings, directory, name)
    except AdminError as exc:
        raise ProvError(str(exc)) from None
    print(f"flushed routes of {account}: {deleted} cached entr{'y' if deleted == 1 else 'ies'} "
          f"removed ({checked} keys checked)")
    return 0


def _admin(settings, directory: Directory):
    from carbotui.admin.changes import Admin
    return Admin(directory, ca_dir=settings.var_dir / "certs")


def _say(result) -> int:
    print(result.message)
    for warning in result.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    return 0


def modify_server(settings, directory: Directory, server: str, *args: str) -> int:
    if len(args) != 2 or args[0].lower() != "zimbrareverseproxymailmode":
        raise UsageError("usage: carbotui prov modifyServer <server> "
                         "zimbraReverseProxyMailMode https|redirect")
    return _say(_admin(settings, directory).set_mail_mode(server, args[1]))


def modify_domain(settings, directory: Directory, domain: str, *args: str) -> int:
    args = list(args)
    cert_file = key_file = ""
    generate = False
    rest = []
    while args:
        arg = args.pop(0)
        if arg == "--generate-cert":
            generate = True
        elif arg in ("--cert", "--key") and args:
            if arg == "--cert":
                cert_file = args.pop(0)
            else:
                key_file = args.pop(0)
        else:
            rest.append(arg)
    if rest and _is_header_attr(rest[0]) and not (cert_file or key_file or generate):
        return modify_headers(_admin(settings, directory), domain, rest, MODIFY_DOMAIN_USAGE)
    if len(rest) != 2:
        raise UsageError(f"usage: carbotui prov {MODIFY_DOMAIN_USAGE}")
    attr, value = rest[0].lower(), rest[1]
    admin = _admin(settings, directory)
    if attr in ("+zimbravirtualhostname", "zimbravirtualhostname"):
        cert_pem = key_pem = None
        if cert_file or key_file:
            if not (cert_file and key_file) or generate:
                raise UsageError("ERROR: give --cert FILE and --key FILE together, "
                                 "or --generate-cert")
            cert_pem, key_pem = _read(cert_file), _read(key_file)
        return _say(admin.add_vhost(domain, value, cert_pem=cert_pem, key_pem=key_pem,
                                    generate=generate))
    if cert_file or key_file or generate:
        raise UsageError("ERROR: certificate options go with +zimbraVirtualHostName only")
    if attr == "-zimbravirtualhostname":
        return _say(admin.remove_vhost(domain, value))
    if attr == "zimbravirtualipaddress":
        return _say(admin.set_vip(domain, value))
    raise UsageError(f"usage: carbotui prov {MODIFY_DOMAIN_USAGE}")


HEADERS_ATTR, CSP_ATTR = "zimbraReverseProxyResponseHeaders", "carbonioReverseProxyResponseCSPHeader"


def _header_attrs(values, csp) -> list[tuple[str, object]]:
    return [(HEADERS_ATTR, values), (CSP_ATTR, csp)]


def get_config(settings, directory: Directory) -> int:
    attrs = directory.response_headers()
    _print_attrs([("zimbraDefaultDomainName", directory.default_domain()),
                  *_header_attrs(attrs.values, attrs.csp)])
    return 0


def _is_header_attr(arg: str) -> bool:
    return arg.lower().lstrip("+-") in (HEADERS_ATTR.lower(), CSP_ATTR.lower())


def modify_headers(admin, domain: str | None, args: list[str], usage: str) -> int:
    """`[+|-]attr value` pairs, zmprov style: one attribute and one kind of change per
    command; the plain form replaces the list with every value given ('' removes it)."""
    if not args or len(args) % 2:
        raise UsageError(f"usage: carbotui prov {usage}")
    pairs = [(args[i], args[i + 1]) for i in range(0, len(args), 2)]
    kinds = {attr[0] if attr[:1] in "+-" else "=" for attr, _ in pairs}
    attrs = {attr.lower().lstrip("+-") for attr, _ in pairs}
    if len(kinds) != 1 or len(attrs) != 1 or not _is_header_attr(pairs[0][0]):
        raise UsageError(f"ERROR: one attribute and one kind of change (replace, + or -) per "
                         f"command\nusage: carbotui prov {usage}")
    op, attr, values = kinds.pop(), attrs.pop(), [v for _, v in pairs]
    if attr == CSP_ATTR.lower():
        if op != "=" or len(values) != 1:
            raise UsageError(f"ERROR: {CSP_ATTR} holds one value (give '' to remove it)")
        return _say(admin.set_csp_header(domain, values[0]))
    return _say(admin.set_response_headers(domain, op, values))


def modify_config(settings, directory: Directory, *args: str) -> int:
    return modify_headers(_admin(settings, directory), None, list(args), MODIFY_CONFIG_USAGE)


def deploy_certificate(settings, directory: Directory, *args: str) -> int:
    """certbot's deploy hook (etc/certbot/carbotui-deploy-hook): the lineage's
    fullchain.pem and privkey.pem for the domains of the names it was issued for."""
    if len(args) < 3:
        raise UsageError(f"usage: carbotui prov deployCertificate {DEPLOY_USAGE}")
    cert_file, key_file, *names = args
    return _say(_admin(settings, directory).install_certificate(
        names, _read(cert_file), _read(key_file)))


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except OSError as exc:
        raise ProvError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ProvError(f"{path} is not a PEM text file") from None


class UsageError(ProvError):
    """Wrong arguments: the message is printed as it is, exit code 2."""


MODIFY_DOMAIN_USAGE = ("modifyDomain <domain> +zimbraVirtualHostName <fqdn> "
                       "[--generate-cert | --cert FILE --key FILE]\n"
                       "       modifyDomain <domain> -zimbraVirtualHostName <fqdn>\n"
                       "       modifyDomain <domain> zimbraVirtualIPAddress <ip>\n"
                       "       modifyDomain <domain> [+|-]zimbraReverseProxyResponseHeaders "
                       "'Name: value' …\n"
                       "       modifyDomain <domain> carbonioReverseProxyResponseCSPHeader "
                       "'Content-Security-Policy: …'")
MODIFY_CONFIG_USAGE = ("modifyConfig [+|-]zimbraReverseProxyResponseHeaders 'Name: value' "
                       "[[+|-]zimbraReverseProxyResponseHeaders 'Name: value' …]\n"
                       "       modifyConfig carbonioReverseProxyResponseCSPHeader "
                       "'Content-Security-Policy: …'   ('' removes a value)")
DEPLOY_USAGE = "<fullchain.pem> <privkey.pem> <virtual hostname> [<virtual hostname> …]"

# name -> (function, argument help, number of arguments after the command or None: any)
COMMANDS: dict[str, tuple[Callable, str, int | None]] = {
    "getAccount": (get_account, "<account>", 1),
    "getDomain": (get_domain, "<domain>", 1),
    "getServer": (get_server, "<hostname>", 1),
    "flushCache": (flush_cache, "<account>", 1),
    "modifyServer": (modify_server, "<server> zimbraReverseProxyMailMode https|redirect", 3),
    "modifyDomain": (modify_domain, "<domain> [+|-]zimbraVirtualHostName <fqdn> | "
                                    "zimbraVirtualIPAddress <ip> | "
                                    "[+|-]zimbraReverseProxyResponseHeaders <value> …", None),
    "getConfig": (get_config, "", 0),
    "modifyConfig": (modify_config, "[+|-]zimbraReverseProxyResponseHeaders <value> … | "
                                    "carbonioReverseProxyResponseCSPHeader <value>", None),
    "deployCertificate": (deploy_certificate, DEPLOY_USAGE, None),
}


def usage() -> str:
    lines = ["usage: carbotui prov <command> <args>", "commands:"]
    lines += [f"  {name} {args}" for name, (_, args, _) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str], config_path: str) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(usage(), file=sys.stderr)
        return 2
    func, arg_help, nargs = COMMANDS[argv[0]]
    if (nargs is not None and len(argv) != nargs + 1) or (nargs != 0 and len(argv) < 2):
        print(f"usage: carbotui prov {argv[0]} {arg_help}", file=sys.stderr)
        return 2
    from carbotui.admin.changes import AdminError
    try:
        settings = config.load(config_path)
        return func(settings, Directory(settings), *argv[1:])
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (ProvError, AdminError, config.ConfigError, DirectoryUnavailable) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
