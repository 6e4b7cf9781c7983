"""Shared by the mirroring/pause fleet tests and bench/mirror.py.

- ``PrivateRouters`` (``tests.ownrouter``'s): an HAProxy of our own in each
  sandbox host's network namespace, on its own HTTP port and admin port, so
  these tests never touch the routers other tests configure.
- ``counting_images``: the demo image with a handler that counts what it
  answers at ``/`` (``c`` a client's request, ``m`` one with the mirror's
  ``X-Reconciler-Mirror`` header) and tells the counts at ``/hits``, and
  the request line's target of every copy at ``/copies`` (one a line).
- ``Load``: bounded requests (count and time) to the hosts' addresses, with
  their latency; with ``ids=True`` each request carries its own id
  (``/?rid=HOST-N``), so a copy green got says which request it copies.
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.core import router as rt
from reconciler.core import traffic
from reconciler.sandbox import images
from tests.ownrouter import PrivateRouters

HANDLER_PATCH = (
    'while read -r -t 5 line; do\n    [ "${line%$CR}" = "" ] && break\ndone\npath=${path%%\\?*}\n',
    'kind=c\nwhile read -r -t 5 line; do\n    [ "${line%$CR}" = "" ] && break\n'
    '    case "$line" in [Xx]-[Rr]econciler-[Mm]irror:*) kind=m ;; esac\ndone\ntarget=$path\npath=${path%%\\?*}\n',
)
# One line per request answered at /: its kind, then its target (path and query).
ROOT_CASE = ('/ | /version)\n    respond "200 OK" "demo-web $VERSION" ;;',
             '/ | /version)\n    echo "$kind $target" >> /tmp/hits\n    respond "200 OK" "demo-web $VERSION" ;;\n'
             '/hits)\n    touch /tmp/hits\n'
             '    respond "200 OK" "$(grep -c \'^c\' /tmp/hits) $(grep -c \'^m\' /tmp/hits)" ;;\n'
             '/copies)\n    touch /tmp/hits\n'
             '    respond "200 OK" "$(sed -n \'s/^m //p\' /tmp/hits)" ;;')


def counting_images(registry: str, repository: str = "mirror/web") -> dict[str, str]:
    """``{"mv1": ref, "mv2": ref}``: counting variants of the demo image, pushed by digest."""
    handler = (images._SCRIPTS / "demo-handler").read_text()
    for old, new in (HANDLER_PATCH, ROOT_CASE):
        assert old in handler, old
        handler = handler.replace(old, new)
    base = images.base_layer_tar(images.BUSYBOX.read_bytes(), (images._SCRIPTS / "entrypoint.sh").read_text(), handler)
    refs = {}
    for tag in ("mv1", "mv2"):
        built = images.build_image(images.Variant(tag, tag, "healthy"), base, images.docker_arch())
        digest = images.push_image(registry, repository, built)
        refs[tag] = f"{registry}/{repository}:{tag}@{digest}"
    return refs


@dataclass
class Responder:
    """A green stand-in that costs next to no CPU: an HAProxy answering 200 itself, in a host's namespace.

    For measuring what mirroring costs blue's router path apart from the
    work a second application does on the same two cores (every sandbox host
    shares this machine's CPUs); its copies are counted by its own frontend.
    """

    host: str
    address: str
    netns: str
    root: Path
    port: int
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "responder.cfg").write_text(
            f"global\n    stats socket {self.root}/admin.sock level admin\n"
            "defaults\n    mode http\n    timeout client 10s\n    timeout connect 5s\n    timeout server 10s\n"
            f"frontend green\n    bind {self.address}:{self.port}\n"
            '    http-request return status 200 content-type text/plain string "green stand-in"\n')
        log = (self.root / "responder.log").open("a")
        self.proc = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{self.netns}", "haproxy", "-db",
                                      "-f", str(self.root / "responder.cfg")],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not (self.root / "admin.sock").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"responder on {self.host} did not start: {(self.root / 'responder.log').read_text()}")
            time.sleep(0.2)

    def requests(self) -> int:
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.root / "admin.sock"))
            s.sendall(b"show stat -1 1 -1\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        row = dict(zip(header, lines[1].split(",")))
        return int(row["req_tot"] or 0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def request(address: str, port: int, hostname: str, path: str = "/", timeout: float = 40.0) -> tuple[int | None, str, float]:
    """(status, body, seconds) of one request on a fresh connection."""
    began = time.perf_counter()
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": hostname})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace").strip(), time.perf_counter() - began
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc}", time.perf_counter() - began
    finally:
        conn.close()


@dataclass
class Sample:
    host: str
    started: float  # time.time()
    seconds: float
    status: int | None
    body: str
    tag: str = ""  # what the caller had switched on when the request started
    rid: str = ""  # the request's own id (``Load(ids=True)``): a copy of it names it


@dataclass
class Load:
    """One thread per host, ``rate`` fresh connections a second, bounded in count and time."""

    addresses: dict[str, str]
    port: int
    hostname: str
    rate: float = 10.0
    max_requests: int = 3000
    max_seconds: float = 300.0
    tag: str = ""
    ids: bool = False  # each request to ``/?rid=HOST-N``
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, host: str, address: str) -> None:
        start = time.monotonic()
        for i in range(self.max_requests):
            due = start + i / self.rate
            if self._stop.is_set() or due - start > self.max_seconds:
                return
            time.sleep(max(0.0, due - time.monotonic()))
            tag, began = self.tag, time.time()
            rid = f"{host}-{i}" if self.ids else ""
            status, body, seconds = request(address, self.port, self.hostname, f"/?rid={rid}" if rid else "/")
            self.samples.append(Sample(host, began, seconds, status, body, tag, rid))

    def start(self) -> "Load":
        self._threads = [threading.Thread(target=self._run, args=item, daemon=True) for item in self.addresses.items()]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def alternate_p99(fleet, routers: PrivateRouters, image: str, hostname: str, *, spare: str, spare_port: int,
                  backend: str, port: int, blocks: int = 60, block_seconds: float = 1.0, percent: int = 30,
                  rate: float = 20.0, green: str = "spare"):
    """Blue's latency with mirroring on and off in alternating blocks, in the same run.

    A spare copy of ``image`` per host is the mirror's target (published on
    ``spare_port`` only so its counts can be read from here); the product's
    ``StartMirror``/``StopMirror`` steps go through the router adapter.
    ``green="responder"`` mirrors to a ``Responder`` on each host instead
    (the router's cost alone).  Returns (samples, p99 off, p99 on, samples
    on, copies the targets got).
    """
    import docker

    from reconciler.adapters.router import Router, RouterAccess
    from reconciler.adapters.ssh import connect

    spares, drivers, conns, responders = {}, {}, [], {}
    target_port = 8080 if green == "spare" else spare_port
    try:
        for h in fleet.hosts:
            client = docker.DockerClient(base_url=f"unix://{h.docker_socket}", version="1.41")
            if green == "spare":
                c = client.containers.run(image, name=spare, detach=True, ports={"8080/tcp": spare_port})
                c.reload()
                spares[h.name] = (client, c, c.attrs["NetworkSettings"]["IPAddress"], h.address)
            else:
                responders[h.name] = Responder(h.name, h.address, h.netns, routers.root / f"responder-{h.name}", spare_port)
                responders[h.name].start()
                spares[h.name] = (client, None, h.address, h.address)
            r = routers.routers[h.name]
            conn = connect(h.ssh_access())
            conns.append(conn)
            drivers[h.name] = Router(conn, RouterAccess(h.name, str(r.config), f"kill -USR2 $(cat {r.root}/haproxy.pid)"),
                                     rt.Site(r.settings()))
        deadline = time.monotonic() + 60
        while green == "spare" and not all(request(a, spare_port, hostname)[0] == 200 for *_, a in spares.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("the spare copies never answered")
            time.sleep(0.5)
        load = Load({h.name: h.address for h in fleet.hosts}, port, hostname, rate=rate,
                    max_requests=int(rate * blocks * block_seconds * 2 + 100),
                    max_seconds=blocks * block_seconds * 2 + 30, tag="off").start()
        try:
            for i in range(blocks * 2):
                on = i % 2 == 1
                for host, driver in drivers.items():
                    address = spares[host][2]
                    step = (traffic.StartMirror(host, backend, "spare", address, target_port, percent) if on
                            else traffic.StopMirror(host, backend, address, target_port))
                    driver.apply(step, persist=False)
                load.tag = "on" if on else "off"
                time.sleep(block_seconds)
            for host, driver in drivers.items():
                driver.apply(traffic.StopMirror(host, backend, spares[host][2], target_port), persist=False)
        finally:
            load.stop()
        if green == "spare":
            copies = sum(int(request(a, spare_port, hostname, "/hits")[1].split()[1]) for *_, a in spares.values())
        else:
            copies = sum(r.requests() for r in responders.values())
        off = [s for s in load.samples if s.tag == "off"]
        on = [s for s in load.samples if s.tag == "on"]
        return load.samples, p99([s.seconds for s in off]), p99([s.seconds for s in on]), len(on), copies
    finally:
        for client, c, *_ in spares.values():
            if c is not None:
                c.remove(force=True)
            client.close()
        for r in responders.values():
            r.stop()
        for conn in conns:
            conn.close()


def copies(address: str, port: int, hostname: str) -> list[str]:
    """The target (path and query) of every copy green answered, in the order it got them."""
    status, body, _ = request(address, port, hostname, "/copies")
    if status != 200:
        raise RuntimeError(f"/copies at {address}:{port}: {status} {body}")
    return [line for line in body.splitlines() if line]


@dataclass(frozen=True)
class Tally:
    """One host's mirror window counted per request id (``Load(ids=True)`` against green's ``copies``).

    ``eligible``: the load's requests that went through the router entirely
    while the mirror was on (sent after ``StartMirror`` was done, answered
    before ``StopMirror`` began), so each had the same ``percent`` chance;
    ``copied``: how many of those green got a copy of.  ``duplicates``: ids
    green got more than once; ``stray``: copies of load requests that were
    at the router only outside the broad window (``StartMirror`` begin ..
    ``StopMirror`` done), which no mirror copied; ``foreign``: copies of requests the
    load did not send (the test's own polls go through the router too).
    """

    eligible: int
    copied: int
    duplicates: tuple[str, ...]
    stray: tuple[str, ...]
    foreign: int


def tally(samples: list[Sample], targets: list[str], on: tuple[float, float], broad: tuple[float, float]) -> Tally:
    from collections import Counter

    ids = Counter(t.partition("rid=")[2] for t in targets)
    foreign = ids.pop("", 0)
    by_id = {s.rid: s for s in samples if s.rid}
    eligible = [s for s in samples if s.rid and on[0] <= s.started and s.started + s.seconds <= on[1]]
    # A request can only be copied while it is at the router, between being sent and answered.
    stray = tuple(sorted(r for r in ids if r not in by_id or by_id[r].started + by_id[r].seconds < broad[0]
                         or by_id[r].started > broad[1]))
    return Tally(eligible=len(eligible), copied=sum(1 for s in eligible if s.rid in ids),
                 duplicates=tuple(sorted(r for r, n in ids.items() if n > 1)), stray=stray, foreign=foreign)
