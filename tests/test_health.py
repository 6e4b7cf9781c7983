"""health.judge and next_check_at: verdicts from check results, with a given clock."""

from reconciler.core.health import EVIDENCE_KEPT, CheckResult, Verdict, judge, next_check_at
from reconciler.core.model import HealthCheck

CHECK = HealthCheck(kind="http", port=80, interval=1.0, successes=3, deadline=10.0)


def results(*oks: bool, start: float = 0.0) -> list[CheckResult]:
    return [CheckResult(ok, f"check {i}: {'ok' if ok else 'fail'}", start + i) for i, ok in enumerate(oks)]


def test_no_results_yet_is_pending():
    assert judge(CHECK, 0.0, [], 0.0) == Verdict("pending", "0/3 consecutive passes", ())


def test_consecutive_successes_make_healthy():
    got = judge(CHECK, 0.0, results(False, True, True, True), 4.0)
    assert (got.state, got.reason) == ("healthy", "3 consecutive checks passed")


def test_successes_interrupted_by_a_failure_do_not_add_up():
    got = judge(CHECK, 0.0, results(True, True, False, True, True), 5.0)
    assert (got.state, got.reason) == ("pending", "2/3 consecutive passes")


def test_flapping_is_never_healthy_and_fails_at_the_deadline():
    flapping = [True, False] * 6
    for n in range(1, len(flapping)):
        got = judge(CHECK, 0.0, results(*flapping[:n]), float(n))
        assert got.state == ("pending" if n < 10 else "unhealthy"), (n, got)
    last = judge(CHECK, 0.0, results(*flapping), 12.0)
    assert last.state == "unhealthy"
    assert last.reason == "not healthy within 10s (0/3 consecutive passes); last: check 11: fail"


def test_fatal_result_is_unhealthy_at_once_even_after_passes():
    checks = results(True, True) + [CheckResult(False, "container is exited", 2.0, fatal=True)]
    assert judge(CHECK, 0.0, checks, 2.0) == Verdict("unhealthy", "container is exited", tuple(checks))


def test_deadline_counts_from_start_and_names_the_last_check():
    got = judge(CHECK, 100.0, results(False, start=100.0), 110.0)
    assert got.state == "unhealthy"
    assert got.reason == "not healthy within 10s (0/3 consecutive passes); last: check 0: fail"
    assert judge(CHECK, 100.0, results(False, start=100.0), 109.9).state == "pending"


def test_deadline_without_any_completed_check():
    got = judge(CHECK, 0.0, [], 10.0)
    assert got == Verdict("unhealthy", "not healthy within 10s (0/3 consecutive passes); last: no check completed", ())


def test_healthy_wins_over_an_expired_deadline_when_the_streak_is_there():
    assert judge(CHECK, 0.0, results(True, True, True), 50.0).state == "healthy"


def test_evidence_keeps_the_last_checks_only():
    checks = results(*([False] * 8))
    got = judge(CHECK, 0.0, checks, 20.0)
    assert got.evidence == tuple(checks[-EVIDENCE_KEPT:])


def test_single_success_required_by_default():
    assert judge(HealthCheck(), 0.0, results(True), 0.0).state == "healthy"


def test_next_check_at_once_then_every_interval():
    assert next_check_at(CHECK, 5.0, None) == 5.0
    assert next_check_at(CHECK, 5.0, 7.5) == 8.5


def test_a_start_period_is_given_on_top_of_the_deadline_and_a_pass_in_it_counts():
    slow = HealthCheck(kind="http", port=80, interval=1.0, successes=3, deadline=10.0, start_period=30.0)
    failing = results(*[False] * 39)
    assert judge(slow, 0.0, failing, 39.9).state == "pending"  # without the start period: unhealthy at 10s
    got = judge(slow, 0.0, failing, 40.0)
    assert got.state == "unhealthy"
    assert got.reason == "not healthy within 10s after a 30s start period (0/3 consecutive passes); last: check 38: fail"
    assert judge(slow, 0.0, results(True, True, True), 3.0).state == "healthy"  # a fast starter is not made to wait

