"""The Engine API's container answers read into ObservedContainer (adapters.engine_json)."""

from reconciler.adapters import engine_json
from reconciler.core import managed


def test_a_list_entry_gives_name_state_labels_and_health_from_its_status():
    entry = {"Id": "c" * 64, "Names": ["/prod-web"], "State": "running", "Status": "Up 3 minutes (unhealthy)",
             "Labels": {managed.LABEL_ENVIRONMENT: "prod", managed.LABEL_SERVICE: "web"}, "ImageID": "sha256:1", "Created": 1700000000}
    seen = engine_json.from_list_entry(entry)
    assert (seen.name, seen.state, seen.health, seen.created) == ("prod-web", "running", "unhealthy", 1700000000.0)
    assert (seen.environment, seen.service, seen.role) == ("prod", "web", managed.ROLE_ACTIVE)
    nameless = engine_json.from_list_entry({"Id": "d" * 64, "Status": "Up (health: starting)"})
    assert (nameless.name, nameless.health, nameless.state) == ("d" * 12, "starting", "unknown")


def test_an_inspect_gives_restarts_finish_time_and_creation_time():
    attrs = {"Id": "e" * 64, "Name": "/prod-web-old-abc", "Image": "sha256:2", "RestartCount": 2,
             "Created": "2026-12-02T05:00:00.123456789Z",
             "State": {"Status": "exited", "FinishedAt": "2026-12-02T05:01:00Z", "Health": {"Status": "healthy"}},
             "Config": {"Labels": {managed.LABEL_ENVIRONMENT: "prod", managed.LABEL_SERVICE: "web"}}}
    seen = engine_json.from_inspect(attrs)
    assert (seen.name, seen.state, seen.restart_count, seen.health) == ("prod-web-old-abc", "exited", 2, "healthy")
    assert seen.created == 1796187600.123456 and seen.finished_at == "2026-12-02T05:01:00Z"
    assert seen.role == managed.ROLE_RETIRED
    assert engine_json.from_inspect({**attrs, "Created": "not a time"}).created == 0.0
