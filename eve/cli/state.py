"""``eve state``: the key that seals the credentials in a coordinator's state file
(``eve.core.secrets``, issue 19).

    eve state new-key FILE                       a new random key, in a file readable by its owner alone
    eve state rotate-key --state PATH --new-key-file FILE [--old-key-file FILE]
                                                 every password sealed with the new key instead
                                                 (the old key: --old-key-file, else EVE_STATE_KEY;
                                                 none: the passwords were in clear)

Rotate with the coordinator stopped: a running ``eve serve`` keeps writing with the key
it was started with. Then start it with the new key.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from eve.cli.exits import EXIT_OK
from eve.core.errors import ConfigError
from eve.core.secrets import KEY_ENV, StateKey, write_new_key

__all__ = ["add_state_commands"]


def _new_key(args: argparse.Namespace) -> int:
    write_new_key(args.file)
    print(f"eve state: a new key in {args.file} (mode 0600); keep it apart from the state file and its backups")
    return EXIT_OK


def _rotate_key(args: argparse.Namespace) -> int:
    from eve.core.store import Store

    if not Path(args.state).is_file():
        raise ConfigError(f"{args.state} is not a file", field="--state")
    old = StateKey.from_options(args.old_key_file, os.environ)
    new = StateKey.from_file(args.new_key_file)
    store = Store(args.state, old)   # a wrong old key is refused here, before anything changes
    try:
        changed = store.rotate_key(new)
    finally:
        store.close()
    print(f"eve state: {changed} stored configs sealed with {new.source}"
          f"{' instead of ' + old.source if old is not None else ' (they were in clear)'}; "
          f"start eve serve with --key-file {args.new_key_file}")
    return EXIT_OK


def add_state_commands(commands: argparse._SubParsersAction) -> None:
    state = commands.add_parser("state", help="the key that seals the credentials in a state file",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    new_key = actions.add_parser("new-key", help="write a new random key to FILE (mode 0600; never overwrites)")
    new_key.add_argument("file", metavar="FILE")
    new_key.set_defaults(run=_new_key)
    rotate = actions.add_parser("rotate-key", help="seal every password of a state file with another key "
                                                   "(with the coordinator stopped)")
    rotate.add_argument("--state", required=True, metavar="PATH", help="the coordinator's state file")
    rotate.add_argument("--old-key-file", metavar="FILE",
                        help=f"the key it is sealed with now (default: ${KEY_ENV}; none: in clear)")
    rotate.add_argument("--new-key-file", required=True, metavar="FILE", help="the key to seal it with")
    rotate.set_defaults(run=_rotate_key)
