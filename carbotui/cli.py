"""The `carbotui` command.

    carbotui [--config FILE] prov <command> …   directory and cache admin
    carbotui [--config FILE] stats              live worker stats as JSON

The settings file defaults to $CARBOTUI_CONFIG, else ./carbotui.toml.
"""
from __future__ import annotations

import json
import os
import sys


def _config_path(argv: list[str]) -> tuple[str, list[str]]:
    path = os.environ.get("CARBOTUI_CONFIG", "carbotui.toml")
    if argv[:1] == ["--config"] and len(argv) > 1:
        path, argv = argv[1], argv[2:]
    return path, argv


def stats(config_path: str) -> int:
    from carbotui import config
    from workers.stats import read

    settings = config.load(config_path)
    out = []
    for sock in sorted(settings.run_dir.glob("proxy_*.sock")):
        try:
            out.append(read(str(sock)))
        except OSError:
            continue          # a worker that is restarting
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0 if out else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config_path, argv = _config_path(argv)
    if argv[:1] == ["prov"]:
        from carbotui import prov
        return prov.main(argv[1:], config_path)
    if argv[:1] == ["stats"]:
        return stats(config_path)
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
