"""Random and mutated YAML never crashes the loader: a result or InvalidDesiredState."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.errors import InvalidDesiredState
from reconciler.core.schema import load_environment, validate
from schema_helpers import ENV, snapshot

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_PROBLEM = r"^[^:]+:\d+:\d+: "
YAML_PIECES = [":", "- ", "  ", "\n", "{", "}", "[", "]", ",", "&a ", "*a", "!!str ", "!x ", "'", '"', "#", "|", ">", "? ", "<<: ", "%YAML 1.2\n", "---\n", "...", "\t", "\\", "@", "`", "0x", "1e9", ".inf", "~", "null", "true", "é", "\x00", "\ufeff"]


def _check(text: bytes | str) -> None:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    snap = snapshot(env=None, files={"environments/test/environment.yaml": data, "environments/test/known_hosts": "#\n"})
    problems = validate(snap)
    assert all(__import__("re").match(_PROBLEM, p) for p in problems), problems
    try:
        load_environment(snap, "test")
    except InvalidDesiredState as exc:
        assert exc.problems and list(exc.problems) == problems
    else:
        assert problems == []


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes(data):
    _check(data)


@SETTINGS
@given(st.data())
def test_mutations_of_a_valid_file(data):
    text = ENV
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace", "duplicate-line"]))
        if action == "insert":
            text = text[:at] + data.draw(st.sampled_from(YAML_PIECES) | st.text(max_size=5)) + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + data.draw(st.integers(1, 20)) :]
        elif action == "replace":
            text = text[:at] + data.draw(st.text(max_size=8)) + text[at + data.draw(st.integers(1, 8)) :]
        else:
            lines = text.splitlines(keepends=True)
            if lines:
                i = data.draw(st.integers(0, len(lines) - 1))
                lines.insert(i, lines[i])
                text = "".join(lines)
    _check(text)


_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)
_KEYS = ["hosts", "policy", "services", "database", "known_hosts", "image", "ports", "env", "health", "secrets", "depends_on", "rollout"]


@SETTINGS
@given(st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), _values, max_size=5), st.sampled_from(["web", "h1", "x"]))
def test_well_formed_yaml_of_the_wrong_shape(tree, name):
    import io

    from ruamel.yaml import YAML

    out = io.StringIO()
    YAML(typ="safe", pure=True).dump({"hosts": {"h1": "10.0.0.1"}, "services": {name: tree}, **tree}, out)
    _check(out.getvalue())
