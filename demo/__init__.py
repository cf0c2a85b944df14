"""The demo around the product, not part of it (the wheel leaves this folder out).

    stack.py        `make up/down/demo`: generate var/, wait for the services, stop them
                    (`python -m demo.stack setup|wait|summary|down`)
    mailbox_web.py  the demo mailbox servers' web app (web1/web2 in supervisord.conf)
    mailsink.py     the SMTP sink that auditwatch's alert e-mails go to (needs aiosmtpd,
                    from the [test] extra)
    fake_source.py  the dashboard's deterministic data source (tests/tui, scripts/screenshots.py)

Run from the checkout (supervisord's `directory=%(here)s`, `make`, pytest's rootdir): the
current directory is on sys.path there, so `python -m demo.…` imports this package.
"""
