"""``leeway keys``: the master key of crypto-shredding (issue 22; README "Personal data").

- ``leeway keys check``: opens the key store with the configured master key (``LEEWAY_MASTER_KEY_FILE``, or the
  development default) and says whether it unwraps the data keys; exit 1 if not.
- ``leeway keys rotate-master --new-key-file FILE``: re-wraps every data key with the master key in FILE, in one
  transaction (the events are never re-encrypted); then point ``LEEWAY_MASTER_KEY_FILE`` at FILE and restart.
- ``leeway keys generate FILE``: writes a new random master key (64 hex digits) to FILE with mode 0600.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from .cli_common import fail, say, tool_settings


def _keystore() -> Any:
    settings = tool_settings(LEEWAY_AUTH="off")
    if settings is None:
        return None
    from .adapters.keystore import KeyStoreError
    from .server import build_application

    try:
        app = build_application(settings)
    except KeyStoreError as error:
        say("keys", error)
        return None
    if app.keystore is None:
        app.close()
        say("keys", "no master key configured (PostgreSQL needs LEEWAY_MASTER_KEY_FILE)")
        return None
    return app


def check(args: argparse.Namespace) -> int:
    app = _keystore()
    if app is None:
        return 1
    try:
        print(f"leeway keys: the master key {app.keystore.master_id} ({app.keystore.master_source}) unwraps the key store")
        return 0
    finally:
        app.close()


def rotate_master(args: argparse.Namespace) -> int:
    from .adapters.keystore import FileMasterKey, KeyStoreError

    app = _keystore()
    if app is None:
        return 1
    try:
        count = app.keystore.rotate_master(FileMasterKey(Path(args.new_key_file)))
    except KeyStoreError as error:
        return fail("keys", error, 1)
    finally:
        app.close()
    print(f"leeway keys: {count} keys re-wrapped; set LEEWAY_MASTER_KEY_FILE={args.new_key_file} and restart "
          "every replica", file=sys.stderr)
    return 0


def generate(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        say("keys", f"{path} exists; not overwritten")
        return 1
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    say("keys", f"a new master key in {path} (mode 0600)")
    return 0


def add_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="the master key of personal-data encryption: check, rotate, generate")
    actions = keys.add_subparsers(dest="action", required=True)
    actions.add_parser("check", help="whether the configured master key unwraps the key store").set_defaults(func=check)
    rotate = actions.add_parser("rotate-master", help="re-wrap every data key with a new master key (events untouched)")
    rotate.add_argument("--new-key-file", required=True, help="the new master key (32 bytes: raw, hex or base64)")
    rotate.set_defaults(func=rotate_master)
    make = actions.add_parser("generate", help="write a new random master key to a file (mode 0600)")
    make.add_argument("file")
    make.set_defaults(func=generate)
