"""Run ``es-lottery ARGV…`` in this process and record every write it makes under a directory.

``python tests/_cli_process.py RECORD ROOT ARGV…`` installs an audit hook (``sys.addaudithook``) BEFORE
es_lottery is imported, runs ``es_lottery.cli.main(ARGV)`` and, at exit, writes to RECORD (JSON) the
exit status and every file-system event whose path lies under ROOT: files opened for writing (builtin
``open`` with a w / a / x / + mode, ``os.open`` with write flags), ``mkdir``, ``rename`` / ``replace``,
``remove``, ``rmdir``, ``copyfile``. ``tests/test_cli_scale.py`` uses it to check that only process 0 of
a ``--distributed`` run writes into the output directory.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.mkdir": 0, "os.remove": 0, "os.rmdir": 0, "os.rename": 1, "shutil.copyfile": 1}


def main() -> int:
    record, root, *argv = sys.argv[1:]
    root = os.path.realpath(root)
    events: list[list[str]] = []

    def under(path) -> str | None:
        if isinstance(path, int) or path is None:
            return None
        text = os.path.realpath(os.fsdecode(path))
        return text if text == root or text.startswith(root + os.sep) else None

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args:
            path, mode, flags = [*args, None, None][:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & WRITE_FLAGS
            )
            hit = under(path) if writing else None
            if hit:
                events.append([event, hit])
        elif event in PATH_EVENTS:
            for path in args[: PATH_EVENTS[event] + 1]:
                hit = under(path)
                if hit:
                    events.append([event, hit])

    sys.addaudithook(hook)
    from es_lottery import cli

    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else 1
    Path(record).write_text(json.dumps({"returncode": rc, "events": events}))
    return rc


if __name__ == "__main__":
    sys.exit(main())
