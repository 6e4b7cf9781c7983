"""The note says how long a deploy held requests for its database steps (``core.held``)."""

from reconciler.core import traffic
from reconciler.core.held import held
from reconciler.core.plan_steps import Route


def hold(host: str, step) -> traffic.DatabaseHold:
    return traffic.DatabaseHold(host, "web", "", route=step)


def test_each_host_held_from_its_hold_to_its_release_and_only_database_holds_count():
    actions = [hold("h1", traffic.HoldRequests("h1", "web", 20.0)), hold("h2", traffic.HoldRequests("h2", "web", 20.0)),
               hold("h1", traffic.ReleaseRequests("h1", "web")), hold("h2", traffic.ReleaseRequests("h2", "web")),
               Route("h3", "web", "", route=traffic.HoldRequests("h3", "web", 30.0))]  # a pause lever's hold
    records = [{"event": "begin", "step": "HoldRequests", "host": "h1", "service": "web", "at": 99.0},
               {"event": "done", "step": "HoldRequests", "host": "h1", "service": "web", "at": 100.0},
               {"event": "done", "step": "HoldRequests", "host": "h2", "service": "web", "at": 100.25},
               {"event": "done", "step": "HoldRequests", "host": "h3", "service": "web", "at": 100.5},
               {"event": "done", "step": "Migrate", "host": "", "service": "", "at": 102.0},
               {"event": "done", "step": "ReleaseRequests", "host": "h1", "service": "web", "at": 103.5},
               {"event": "done", "step": "ReleaseRequests", "host": "h3", "service": "web", "at": 104.0}]
    # h2's release is not recorded (the run died): no figure rather than a wrong one.
    assert held(actions, records) == {"h1": {"web": 3.5}}
