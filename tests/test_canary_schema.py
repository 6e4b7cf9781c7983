"""The canary and watch keys of ``rollout``: loaded into the model, or refused with file:line."""

from __future__ import annotations

import pytest

from reconciler.core import model
from reconciler.core.schema import load_environment, validate
from schema_helpers import DIGEST, env_with, snapshot

ROUTER = "router:\n  bind: \"{address}:80\"\n  config_file: /srv/{host}/haproxy.cfg\n  reload: \"true\"\n"
FILE = "environments/test/environment.yaml"


def web(rollout: str, expose: bool = True) -> str:
    return (f"  web:\n    image: registry.example:5000/demo/web:v1@{DIGEST}\n    hosts: [web]\n"
            + ("    expose: {hosts: [shop.example.com], port: 8080}\n" if expose else "")
            + f"    health: {{type: http, port: 8080, path: /health}}\n    rollout: {rollout}\n")


def problems(rollout: str, expose: bool = True) -> list[str]:
    return validate(snapshot(env=env_with(web(rollout, expose), top=ROUTER if expose else "")), "test")


def test_a_canary_loads_with_every_key():
    text = env_with(web("{strategy: canary, steps: [0, 5, 25, 50, 100], pause: 1m, abort: {errors: 2%}, "
                        "sticky: false, qa: {header: X-Canary, cookie: canary}, watch: 5m}"), top=ROUTER)
    service = load_environment(snapshot(env=text), "test").service("web")
    assert service.strategy == "canary"
    assert service.rollout == model.Rollout(1, "canary", watch=300.0, max_errors=None, max_error_rate=0.02,
                                            canary=model.Canary((0, 5, 25, 50, 100), 60.0, False, "X-Canary", "canary"))


def test_defaults_and_a_count_rule():
    text = env_with(web("{strategy: canary, abort: {errors: 3}}"), top=ROUTER)
    rollout = load_environment(snapshot(env=text), "test").service("web").rollout
    assert rollout.canary == model.Canary() and (rollout.max_errors, rollout.max_error_rate) == (3, None)
    blue_green = load_environment(snapshot(env=env_with(web("{watch: 30s}"), top=ROUTER)), "test").service("web")
    assert blue_green.strategy == "blue-green" and blue_green.rollout.watch == 30.0 and blue_green.rollout.canary is None


LINE = 16  # the rollout line; its flow mapping starts at column 14


def at(rollout: str, marker: str) -> str:
    """``LINE:COL`` of ``marker`` inside the rollout's text."""
    return f"{LINE}:{14 + rollout.index(marker)}"


@pytest.mark.parametrize("rollout, marker, expected", [
    ("{strategy: canary, steps: [5, 5, 100]}", '5, 100', "services.web.rollout.steps: steps must increase, got 5 after 5"),
    ("{strategy: canary, steps: [5, 50]}", '50]', "services.web.rollout.steps: the last step must be 100"),
    ("{strategy: canary, steps: [100]}", '[100]', "services.web.rollout.steps: give at least two steps"),
    ("{strategy: canary, steps: [5, 150]}", '150', "services.web.rollout.steps: each step is a whole percentage"),
    ("{strategy: canary, steps: [5, x, 100]}", 'x', "services.web.rollout.steps: each step is a whole percentage"),
    ("{steps: [5, 100]}", '[5, 100]', "services.web.rollout.steps: only with 'strategy: canary'"),
    ("{strategy: blue-green, qa: {header: X}}", '{header', "services.web.rollout.qa: only with 'strategy: canary'"),
    ("{strategy: canary, abort: {errors: 1.5}}", '1.5', "services.web.rollout.abort.errors: expected a count"),
    ("{strategy: canary, abort: {errors: 120%}}", '120%', "services.web.rollout.abort.errors: expected a count"),
    ("{abort: {errors: 1%}}", '{errors', "services.web.rollout.abort: applies to a canary's pauses and the watch"),
    ("{strategy: canary, qa: {header: 'X Canary'}}", "'X Canary'", "services.web.rollout.qa.header: invalid value"),
    ("{strategy: canary, qa: {}}", '{}', "services.web.rollout.qa: give 'header' and/or 'cookie'"),
    ("{strategy: canary, pause: 0s}", '0s', "services.web.rollout.pause: must be longer than 0s"),
    ("{watch: 0s}", '0s', "services.web.rollout.watch: must be longer than 0s"),
    ("{strategy: canary, steps: [0, 100]}", '0, 100', "services.web.rollout.steps: a first step of 0 holds QA traffic"),
    # A canary's share is the service's, on every host together: host batches would do nothing.
    ("{strategy: canary, batch_size: 2}", '2}', "services.web.rollout.batch_size: a canary shifts the weights on "
                                              "every host of the service together"),
    ("{batch_size: 1, strategy: canary}", '1,', "services.web.rollout.batch_size: a canary shifts"),
])
def test_bad_values_are_refused_where_they_are_written(rollout, marker, expected):
    found = problems(rollout)
    assert len(found) == 1 and found[0].startswith(f"{FILE}:{at(rollout, marker)}: {expected}"), found


@pytest.mark.parametrize("rollout, marker, expected", [
    ("{strategy: canary}", 'canary', "services.web.rollout.strategy: canary needs 'expose'"),
    ("{watch: 5m}", '5m', "services.web.rollout.watch: needs 'expose'"),
])
def test_a_canary_or_a_watch_needs_expose(rollout, marker, expected):
    found = problems(rollout, expose=False)
    assert any(p.startswith(f"{FILE}:{LINE - 5}:{14 + rollout.index(marker)}: {expected}") for p in found), found


@pytest.mark.parametrize("rollout", ["{strategy: canary, steps: [0, 5, 100], pause: 30s, qa: {cookie: qa}, watch: 1m}",
                                     "{strategy: canary, steps: [5, 100], sticky: false}",
                                     "{strategy: canary, abort: {errors: 4}}", "{watch: 2m, abort: {errors: 0.5%}}",
                                     "{batch_size: 2}"])
def test_render_gives_the_keys_back_and_they_load_to_the_same_rollout(rollout):
    import json

    from reconciler.cli.commands.render import service_document

    first = load_environment(snapshot(env=env_with(web(rollout), top=ROUTER)), "test").service("web")
    again = load_environment(snapshot(env=env_with(web(json.dumps(service_document(first)["rollout"])), top=ROUTER)),
                             "test").service("web")
    assert again.rollout == first.rollout
