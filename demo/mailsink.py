"""A demo SMTP sink: accepts every message and files it in a Maildir.

    python -m demo.mailsink --listen 127.0.0.1:10025 --maildir var/mailsink

The demo has no real mail server, so auditwatch's e-mailed alerts land here
(``var/mailsink/new/``) where the demo and the tests can read them. Loopback
only and no auth: never point it at a public address. SIGTERM exits.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import mailbox
import signal
import sys
from email import message_from_bytes, policy
from pathlib import Path

from aiosmtpd.smtp import SMTP

from carbotui.core.settings import ConfigError, parse_endpoint

log = logging.getLogger("demo.mailsink")


class MaildirHandler:
    def __init__(self, maildir: Path):
        # Maildir(create=True) makes tmp/new/cur only when the folder itself is new; the
        # demo setup creates the folder (owned by the service user), so make them here.
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.box = mailbox.Maildir(maildir, create=True)

    async def handle_DATA(self, server, session, envelope) -> str:
        msg = message_from_bytes(envelope.original_content or envelope.content,
                                 policy=policy.default)
        # Maildir delivery: written under tmp/, renamed into new/ (no half-written mail).
        key = self.box.add(mailbox.MaildirMessage(msg))
        log.info("from %s to %s: %s (%s)", envelope.mail_from, ", ".join(envelope.rcpt_tos),
                 msg.get("Subject", ""), key)
        return "250 Message accepted for delivery"


async def serve(host: str, port: int, maildir: Path) -> None:
    handler = MaildirHandler(maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="mailsink.local"),
                                      host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("accepting mail on %s:%d into %s", host, port, maildir)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.mailsink",
                                     description="demo SMTP sink writing a Maildir")
    parser.add_argument("--listen", default="127.0.0.1:10025", help="address:port")
    parser.add_argument("--maildir", default="var/mailsink", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        endpoint = parse_endpoint(args.listen, "--listen")
    except ConfigError as exc:
        parser.error(str(exc))
    asyncio.run(serve(endpoint.host, endpoint.port, args.maildir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
