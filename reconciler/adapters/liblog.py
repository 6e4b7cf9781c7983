"""The libraries' log records, as the agent's own structured lines.

paramiko, docker, urllib3, invoke and fabric log through ``logging``; with no
handler configured, Python's last-resort handler prints their warnings and
errors raw on stderr (``Socket exception: Connection reset by peer (104)``
between the agent's JSON lines).  ``route_library_logs(log)`` gives each of
those loggers one handler that calls the agent's ``log(event, **fields)``
(``agent.loop.make_logger``) and stops them propagating to the root logger,
so each record becomes one ``library-log`` line.  Python's own raw output
goes the same way: warnings (``logging.captureWarnings``) and an exception
that ends a thread (``threading.excepthook``, as ``thread-crashed``).

paramiko names a connection's logger ``paramiko.transport.<host>`` (see
``adapters.ssh``): the host becomes the line's ``host`` field.
"""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Callable

LIBRARIES = ("paramiko", "docker", "urllib3", "invoke", "fabric", "py.warnings")
TRANSPORT = "paramiko.transport."

Log = Callable[..., None]


class _ToAgentLog(logging.Handler):
    def __init__(self, log: Log, level: int) -> None:
        super().__init__(level)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {}
            name = record.name
            if name.startswith(TRANSPORT):  # paramiko.transport.<host>, and <host>.sftp for its SFTP sessions
                host, sftp = name[len(TRANSPORT):], name.endswith(".sftp")
                fields["host"] = host[:-len(".sftp")] if sftp else host
                name = TRANSPORT + "sftp" if sftp else TRANSPORT.rstrip(".")
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            self.log("library-log", **fields, logger=name, level=record.levelname.lower(), message=message)
        except Exception:  # noqa: BLE001 - logging's contract: a handler reports its own failure
            self.handleError(record)


def route_library_logs(log: Log, level: int = logging.WARNING) -> Callable[[], None]:
    """Send the libraries' records at ``level`` and above to ``log``; nothing
    of theirs reaches stderr raw.  Returns a function that undoes it (tests)."""
    handler = _ToAgentLog(log, level)
    saved = {}
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        saved[name] = (logger.level, logger.propagate)
        for old in [h for h in logger.handlers if isinstance(h, _ToAgentLog)]:
            logger.removeHandler(old)  # routed once more: the newest log wins, no line twice
        logger.addHandler(handler)
        logger.setLevel(level)  # a library that set its own level (docker-py sets paramiko's) is overridden
        logger.propagate = False
    logging.captureWarnings(True)
    previous_hook = threading.excepthook

    def thread_crashed(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        log("thread-crashed", thread=args.thread.name if args.thread else None,
            error=f"{args.exc_type.__name__}: {args.exc_value}",
            traceback="".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))

    threading.excepthook = thread_crashed

    def undo() -> None:
        threading.excepthook = previous_hook
        logging.captureWarnings(False)
        for name, (lvl, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.removeHandler(handler)
            logger.setLevel(lvl)
            logger.propagate = propagate

    return undo
