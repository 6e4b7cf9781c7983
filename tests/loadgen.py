"""The bounded load generator every router fleet test and bench uses.

Only to the sandbox hosts' addresses (or loopback): one thread per host, a
fixed rate of fresh connections, bounded in request count and in time.  A
``sticky`` load is one client per host that keeps the cookies the router
sets (a browser would); ``headers`` go with every request (a QA client's
``X-Canary``).  Every answer is kept with its times (``time.time()``,
comparable with the journal's records), status, body and the cookie it
carried.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Answer:
    host: str
    started: float  # time.time(): comparable with the journal's records
    ended: float
    status: int | None
    body: str
    cookie: str = ""  # what the client sent (a sticky client's cookie)
    session: int = 0  # a sticky client's session: its cookies are dropped every ``session_requests``


def one_request(address: str, hostname: str, port: int = 80) -> tuple[int | None, str]:
    """One GET / with a fresh connection: status (None: no answer) and body."""
    return fetch(address, hostname, port)[:2]


def fetch(address: str, hostname: str, port: int = 80, headers: dict[str, str] | None = None,
          cookie: str = "") -> tuple[int | None, str, str]:
    """One GET / with a fresh connection: status (None: no answer), body, the Set-Cookie it got."""
    conn = http.client.HTTPConnection(address, port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": hostname, **(headers or {}), **({"Cookie": cookie} if cookie else {})})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace").strip(), response.getheader("Set-Cookie") or ""
    except (OSError, http.client.HTTPException) as exc:
        # No answer, or a cut one (IncompleteRead, BadStatusLine): a failed
        # request, counted as one, never an exception that ends the thread
        # sending them (its requests would just stop, and their failures vanish).
        return None, f"{type(exc).__name__}: {exc}", ""
    finally:
        conn.close()


@dataclass
class Load:
    """One thread per host, ``rate`` fresh connections a second, until stopped or bounded out."""

    addresses: dict[str, str]
    hostname: str
    rate: float = 10.0
    port: int = 80  # each host's router; another port reaches a published container directly
    max_requests: int = 2000  # per host: bounded in count...
    max_seconds: float = 200.0  # ...and in time
    headers: dict[str, str] = field(default_factory=dict)
    sticky: bool = False  # keep the cookie the router sets, like a browser
    session_requests: int = 0  # a sticky client starts a new session (no cookie) this often; 0: never
    settle: float = 2.0  # seconds of requests before the block runs, and after it
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, host: str, address: str) -> None:
        start = time.monotonic()
        cookie = ""
        for i in range(self.max_requests):
            due = start + i / self.rate
            if self._stop.is_set() or due - start > self.max_seconds:
                return
            time.sleep(max(0.0, due - time.monotonic()))
            began = time.time()
            session = i // self.session_requests if self.session_requests else 0
            if self.session_requests and i % self.session_requests == 0:
                cookie = ""
            status, body, set_cookie = fetch(address, self.hostname, self.port, self.headers, cookie)
            self.answers.append(Answer(host, began, time.time(), status, body, cookie, session))
            if self.sticky and set_cookie:
                cookie = set_cookie.split(";", 1)[0]

    def __enter__(self) -> "Load":
        self._threads = [threading.Thread(target=self._run, args=item, daemon=True) for item in self.addresses.items()]
        for t in self._threads:
            t.start()
        time.sleep(self.settle)  # a stretch of requests before anything changes
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(self.settle)  # and after
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]
