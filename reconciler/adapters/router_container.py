"""A host's router container, through the host's Engine API (the host driver's SSH connection).

Every operation is an Engine API call over the connection the run already
holds (``hosts.DockerHost``), never the ``docker`` CLI: creating the
container (host network, its directory mounted, the restart policy), a
signal to its master (``SIGUSR2`` reloads, ``SIGUSR1`` is HAProxy's soft
stop), a config check by the image's own ``haproxy -c`` (an exec in the
running router, or a one-off container of the image when none runs), and
its logs for errors.  What to create is ``core.router_image.RouterContainer``.
"""

from __future__ import annotations

import time

from reconciler.core import router_image as ri
from reconciler.core.managed import ObservedContainer
from reconciler.errors import EngineError, RouterError

POLL = 0.2


class RouterEngine:
    """The router container operations on one host (``driver``: its ``hosts.DockerHost``)."""

    def __init__(self, driver, spec: ri.RouterContainer) -> None:
        self.driver = driver
        self.spec = spec
        self.api = driver.engine.api
        self.host = driver.name

    def _call(self, what: str, fn, *args, **kwargs):
        return self.driver._call(what, fn, *args, **kwargs)

    def find(self, name: str) -> ObservedContainer | None:
        return next((c for c in self.driver.observe().containers if c.name == name), None)

    def running(self) -> ObservedContainer | None:
        """The environment's router that serves now: the current one, else one being replaced."""
        environment = dict(self.spec.labels)[ri.LABEL_ROUTER]
        for name in (self.spec.name, ri.replaced_name(environment)):
            found = self.find(name)
            if found is not None and found.running:
                return found
        return None

    def create(self, *, take_over: bool) -> str:
        """The router container (not started); ``take_over``: it takes the listeners of the one running."""
        spec = self.spec
        host_config = self.api.create_host_config(network_mode="host", binds=[f"{spec.directory}:{spec.directory}:rw"],
                                                  restart_policy={"Name": spec.restart})
        created = self._call(f"create router container {spec.name}", self.api.create_container,
                             spec.image.pull_ref, entrypoint=["haproxy"], command=list(spec.command(take_over)),
                             name=spec.name, labels=dict(spec.labels), host_config=host_config, stop_signal="SIGUSR1")
        return created["Id"]

    def start(self, container_id: str) -> None:
        self._call(f"start router {container_id[:12]}", self.api.start, container_id)

    def rename(self, container_id: str, name: str) -> None:
        self._call(f"rename router {container_id[:12]} to {name}", self.api.rename, container_id, name)

    def signal(self, container_id: str, signal: str) -> None:
        self._call(f"{signal} to router {container_id[:12]}", self.api.kill, container_id, signal=signal)

    def remove(self, container_id: str) -> None:
        self._call(f"remove router {container_id[:12]}", self.api.remove_container, container_id, force=True,
                   missing_ok=True)

    def logs(self, container_id: str, lines: int = 20) -> str:
        try:
            raw = self._call(f"logs of router {container_id[:12]}", self.api.logs, container_id, tail=lines)
        except EngineError:
            return ""
        return raw.decode("utf-8", "replace").strip() if raw else ""

    def state(self, container_id: str) -> dict:
        attrs = self._call(f"inspect router {container_id[:12]}", self.api.inspect_container, container_id,
                           missing_ok=True, retry=True)
        return (attrs or {}).get("State") or {}

    def wait_loaded(self, container_id: str, deadline: float) -> None:
        """Until its master says its workers loaded the config; ``RouterError`` with its logs if it exits first."""
        end = time.monotonic() + deadline
        while True:
            state = self.state(container_id)
            if not state.get("Running"):
                raise RouterError(f"router container {container_id[:12]} exited (code {state.get('ExitCode')}) "
                                  f"before serving; its logs:\n{self.logs(container_id)}", host=self.host)
            if "Loading success." in self.logs(container_id, 50):
                return
            if time.monotonic() >= end:
                raise RouterError(f"router container {container_id[:12]} did not load its config within "
                                  f"{deadline:.0f}s; its logs:\n{self.logs(container_id)}", host=self.host)
            time.sleep(POLL)

    def soft_stop(self, container_id: str, deadline: float) -> None:
        """Stopped with its stop signal, ``SIGUSR1`` (it stops listening and exits once its requests
        are done; killed after ``deadline``), then removed.  A stop, not a kill: the restart
        policy would start it again after a signal it exits on."""
        self._call(f"stop router {container_id[:12]}", self.api.stop, container_id, timeout=int(deadline),
                   missing_ok=True)
        self.remove(container_id)

    def reload(self) -> None:
        """``SIGUSR2`` to the master of the router that serves: it re-reads its config, listeners handed over."""
        running = self.running()
        if running is None:
            raise RouterError(f"router reload: no router container of this environment runs ({self.spec.name})",
                              host=self.host)
        self.signal(running.id, "SIGUSR2")

    def check(self, path: str) -> tuple[int, str]:
        """The image's ``haproxy -c`` on ``path`` (in the mounted directory): exit code and output."""
        running = self.running()
        if running is not None:
            made = self._call("router config check", self.api.exec_create, running.id,
                              ["haproxy", *self.spec.check(path)])
            out = self._call("router config check", self.api.exec_start, made["Id"]) or b""
            code = self._call("router config check", self.api.exec_inspect, made["Id"]).get("ExitCode")
            return int(code if code is not None else 1), out.decode("utf-8", "replace").strip()
        # None runs yet: a one-off container of the image, on no network.
        host_config = self.api.create_host_config(network_mode="none",
                                                  binds=[f"{self.spec.directory}:{self.spec.directory}:ro"])
        made = self._call("router config check", self.api.create_container, self.spec.image.pull_ref,
                          entrypoint=["haproxy"], command=list(self.spec.check(path)), host_config=host_config,
                          labels={ri.LABEL_ROUTER + ".check": dict(self.spec.labels)[ri.LABEL_ROUTER]})
        try:
            self._call("router config check", self.api.start, made["Id"])
            code = self._call("router config check", self.api.wait, made["Id"], timeout=60).get("StatusCode", 1)
            out = self._call("router config check", self.api.logs, made["Id"]) or b""
        finally:
            self.remove(made["Id"])
        return int(code), out.decode("utf-8", "replace").strip()
