"""Lesson 04, exercise 1's check: /dashboard calls its upstreams at once, hides an extra's outage,
and nothing else (no profile: a 502 with the extras cancelled; a bug: a 500). Latencies are drawn
at random every run, so an answer that relies on completion order fails every run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random

from ..blocking import BlockingWatch
from ..harness import serve
from ..observe import json_body, show_response, status_hint
from ..runner import check
from ..services import UpstreamError
from ..timing import Timeline
from .judge_common import USERS, _cancel_mid_wait, _flat, _judge_loop_free, _short, _timed_get, same_json
from .world import Upstream, orders_api, peak_overlap, profile_api, recommendations_api, stop_leftovers, until


# ---- exercise 1: the dashboard, and what it may hide -------------------------------------------

DASHBOARD = (("profile", profile_api), ("orders", orders_api), ("recommendations", recommendations_api))
LATENCY_STEPS = (0.06, 0.09, 0.12)  # three upstreams finish 30 ms apart, in a random order
# Overlap is judged exactly (calls in flight at once). The clock is only a backstop for gross
# delays: the request ÷ the slowest latency the check set. Right answers measured 1.0–1.2, up to
# 2.3 on a heavily loaded machine and 2.9 for a `def` route with a core kept busy; calls one
# after another give 2.25–2.6, and are caught by the overlap count anyway.
SLOW_RATIO = 5.0


def _random_order(n: int = 3, avoid: tuple | None = None) -> tuple[int, ...]:
    """A random order of n items that is not `avoid` (by default, not the order given)."""
    avoid = tuple(range(n)) if avoid is None else avoid
    return random.choice([p for p in itertools.permutations(range(n)) if p != avoid])


def _step_latencies(order) -> list[float]:
    return [LATENCY_STEPS[i] + random.uniform(-0.004, 0.004) for i in order]


def _reset(*services: Upstream) -> None:
    for service in services:
        service.reset()



def _set_dashboard_latencies(user: str, order) -> dict[str, float]:
    latencies = dict(zip((name for name, _ in DASHBOARD), _step_latencies(order)))
    for name, service in DASHBOARD:
        service.latency_for[user] = latencies[name]
    return latencies


async def _dashboard_run(app, users, cancel_user):
    """GET the dashboard for every user at once (upstream calls drawn on one timeline), then
    cancel one more request mid-wait; count the calls left running, and stop them."""
    timeline = Timeline(title="upstream calls")
    for _, service in DASHBOARD:
        service.timeline = timeline
    try:
        async with serve(app, raise_app_exceptions=False) as client, BlockingWatch() as watch:
            results = await asyncio.gather(*(_timed_get(client, f"/dashboard/{user}") for user in users))
            # Calls the answer did not wait for end on their own (cancelled at their next step, or
            # finished): wait for that, then count what is still running and stop it.
            await until(lambda: not any(service.running() for _, service in DASHBOARD), 1.0)
            cancelled = await _cancel_mid_wait(client, f"/dashboard/{cancel_user}", _dashboard_calls(cancel_user))
    finally:
        for _, service in DASHBOARD:
            service.timeline = None
        left = await stop_leftovers(*(service for _, service in DASHBOARD))
    return client, results, watch, timeline, cancelled, left


def _dashboard_calls(user):
    return lambda: [c for _, service in DASHBOARD for c in service.calls_for(user)]


def _judge_overlap(report, users, results, latencies, hint: str) -> None:
    """Each request's own three calls overlap; it takes about as long as its slowest latency."""
    worst = None
    for user, (_, start, end) in zip(users, results):
        calls = _dashboard_calls(user)()
        took = end - start
        slowest = max(latencies[user].values())
        row = (peak_overlap(calls), took / slowest, took, user, len(calls))
        if worst is None or (row[0], -row[1]) < (worst[0], -worst[1]):
            worst = row
    overlap, ratio, took, user, count = worst
    report.add(
        "the upstream calls overlap", overlap == len(DASHBOARD) and count == len(DASHBOARD) and ratio < SLOW_RATIO,
        observed=f"at most {overlap} of {count} calls in flight at once; the request took {took * 1000:.0f} ms = "
                 f"{ratio:.1f}× the slowest call",
        expected=f"{len(DASHBOARD)} calls at once (one per upstream), under {SLOW_RATIO}× the slowest call",
        hint=("Call each upstream once per request." if count != len(DASHBOARD) else hint if overlap < len(DASHBOARD)
              else "The calls overlapped, but the answer came long after the slowest of them: what else does the "
                   "route wait for?"),
    )


# Each request of the check is one situation; the extras may fail, the profile may not.
PAGE_CASES = {"ok": (), "one extra down": ("recommendations",), "both extras down": ("orders", "recommendations")}
PROFILE_DOWN, BUG, CANCELLED = "profile down", "a bug in recommendations", "cancelled"


def _failure_words(failing) -> str:
    return " and ".join(failing) + (" fail" if len(failing) > 1 else " fails") if failing else "nothing fails"


def _raised(client, user):
    errors = client.errors_for(f"/dashboard/{user}")
    return errors[-1].exception if errors else None


@check("Lesson 04 · /dashboard: calls at once, hides an extra's outage, nothing else", limit_s=15)
async def check_dashboard(report, app):
    users = random.sample(USERS, len(PAGE_CASES) + 3)
    case_of = dict(zip(users, [*PAGE_CASES, PROFILE_DOWN, BUG, CANCELLED]))
    user_for = {case: user for user, case in case_of.items()}
    _reset(*(service for _, service in DASHBOARD))
    latencies = {}
    for index, (user, case) in enumerate(case_of.items()):
        order = _random_order() if index == 0 else random.choice(list(itertools.permutations(range(3))))
        latencies[user] = _set_dashboard_latencies(user, order)
        for name, service in DASHBOARD:
            if name in PAGE_CASES.get(case, ()):
                service.fail_keys.add(user)
    # The profile fails fast while the extras are slow: what happens to them is plain to count.
    profile_down = user_for[PROFILE_DOWN]
    profile_api.fail_keys.add(profile_down)
    profile_api.latency_for[profile_down] = random.uniform(0.03, 0.05)
    orders_api.latency_for[profile_down] = random.uniform(0.3, 0.4)
    recommendations_api.latency_for[profile_down] = random.uniform(0.3, 0.4)
    recommendations_api.bug_keys.add(user_for[BUG])
    for _, service in DASHBOARD:  # the request the check cancels: every call still waiting
        service.latency_for[user_for[CANCELLED]] = random.uniform(0.6, 0.9)
    client, results, watch, timeline, cancelled, left = await _dashboard_run(app, users[:-1], users[-1])
    response_of = {user: result for user, result in zip(users, results)}
    page_users = [user_for[case] for case in PAGE_CASES]
    for user in page_users:
        response = response_of[user][0]
        if response.status_code != 200:
            return report.fail(f"GET /dashboard/{{user}} answers 200 when {_failure_words(PAGE_CASES[case_of[user]])}",
                               observed=show_response(response, client), expected="200 with what arrived",
                               hint=_page_hint(_raised(client, user), response, client, case_of[user]))
    report.add("answers 200 when nothing fails, or only extras fail", True)
    if not _judge_loop_free(report, watch):
        return
    for user in page_users:
        problem = _partial_problem(json_body(response_of[user][0]), user, PAGE_CASES[case_of[user]])
        if problem:
            observed, hint = problem
            return report.fail("each result, or an error marker with the message, under its name",
                               observed=f"when {_failure_words(PAGE_CASES[case_of[user]])}: {observed}",
                               expected='the results that arrived, and {"error": "<the exception\'s message>"} for each failed extra',
                               hint=hint)
    report.add("each result, or an error marker with the message, under its name", True)
    _judge_overlap(report, page_users, [response_of[u] for u in page_users], latencies,
                   "Independent awaits can run at once: `asyncio.gather` or a `TaskGroup` starts them together.")
    _judge_profile_down(report, client, response_of[profile_down], profile_down)
    _judge_bug(report, client, response_of[user_for[BUG]][0], user_for[BUG])
    started, outcomes = cancelled
    report.add(
        "a dashboard cancelled while it waits cancels its calls", started and outcomes == ["cancelled"] * len(DASHBOARD),
        observed=(f"the request was cancelled with its 3 calls running; they then ended: {', '.join(outcomes)}"
                  if started else "the request never had its 3 calls running at once"),
        expected="3 cancelled",
        hint="A caller may give up (a deadline around it, a server shutting down): tasks you created yourself run "
             "on unless something cancels them. `gather` and a `TaskGroup` cancel what they wait for.",
    )
    if left:
        report.fail("nothing left running after the responses", observed=f"{left} upstream calls still running "
                    "1 s after every response was sent (the check stopped them)", expected="none",
                    hint="A call nobody waits for any more still holds a connection: cancel what you no longer need.")
    report.figure("Your upstream calls: overlapping bars ran at once", timeline._repr_png_)
    report.metrics["in_requests_s"] = max(end for _, _, end in results) - min(start for _, start, _ in results)


def _page_hint(raised, response, client, case) -> str:
    leaves = _flat(raised)
    if response.status_code == 502:
        return ("An extra's outage failed the whole page: catch it where that extra is awaited (inside its own "
                "task, where a group never sees it), and keep 502 for the profile.")
    if leaves and all(isinstance(leaf, UpstreamError) for leaf in leaves):
        if isinstance(raised, BaseExceptionGroup):
            return ("A TaskGroup fails as a whole when one child raises: an extra's outage must be caught inside "
                    "its own task, where the group never sees it.")
        if case == "both extras down":
            return "Both extras may be down, not only recommendations: each extra's outage stays inside the page."
        return ("An extra's outage should not fail the page: catch `UpstreamError` around that call (or take it "
                "as a result with `return_exceptions=True`) and put the marker in its place.")
    return status_hint(response, "GET", "/dashboard/{user}", client)


def _partial_problem(body, user: str, failing) -> tuple[str, str] | None:
    if not isinstance(body, dict) or set(body) != {name for name, _ in DASHBOARD}:
        return (_short(json.dumps(body)), "Return an object with exactly the keys profile, orders and recommendations, failed or not.")
    for name, service in DASHBOARD:
        value = body[name]
        if name in failing:
            message = f"{service.name} is down"
            if not (isinstance(value, dict) and set(value) == {"error"} and isinstance(value["error"], str)
                    and message in value["error"]):
                return (f'"{name}": {_short(json.dumps(value), 80)}',
                        f'A failed call becomes {{"error": str(exc)}}: its message ("{message}") tells the page what '
                        "went wrong; null, true or a bare string does not.")
        elif not same_json(value, service.answer(user)):
            return (f'"{name}": {_short(json.dumps(value), 80)}',
                    "The calls that succeeded keep their own result under their own name; results taken in the "
                    "order they finished end up under the wrong names.")
    return None


def _judge_profile_down(report, client, result, user) -> None:
    response, _, end = result
    raised = _raised(client, user)
    if response.status_code != 502:
        profile_leaf = any(isinstance(leaf, UpstreamError) for leaf in _flat(raised))
        hint = ("Without its profile there is no page: the outage must fail the request, not hide in a marker."
                if response.status_code == 200 else
                "`except*` takes the profile's `UpstreamError` out of the TaskGroup's ExceptionGroup; then raise "
                "`HTTPException(502)`." if isinstance(raised, BaseExceptionGroup) and profile_leaf else
                "The profile service is down: that is a bad gateway, so turn its `UpstreamError` into a 502 "
                "(`HTTPException`)." if profile_leaf else status_hint(response, "GET", "/dashboard/{user}", client))
        report.fail("no profile, no page: 502", observed=f"when the profile fails: {show_response(response, client)}",
                    expected="502", hint=hint)
        return
    report.add("no profile, no page: 502", True)
    extras = [c for name, service in DASHBOARD if name != "profile" for c in service.calls_for(user)]
    outcomes = sorted(c.outcome for c in extras)
    waited = [c for c in extras if c.outcome == "ok" and c.end <= end]
    report.add(
        "when the profile fails, the extras' calls are cancelled", outcomes == ["cancelled", "cancelled"],
        observed=f"the profile failed after {profile_api.latency(user) * 1000:.0f} ms; the extras' calls then: "
                 f"{', '.join(outcomes) or 'none'}" + (f" ({len(waited)} awaited before the 502)" if waited else ""),
        expected="2 cancelled: their results would be thrown away",
        hint=("The 502 waited for calls whose results it threw away: `return_exceptions=True` waits for every call; "
              "a TaskGroup cancels the rest when one child fails." if waited else
              "After the 502 they ran on: `gather` does not cancel the others when one fails; a TaskGroup does."
              if "ok" in outcomes or "running" in outcomes else "Start all three calls at once, once per request."),
    )


def _judge_bug(report, client, response, user) -> None:
    raised = _raised(client, user)
    bug_seen = any(isinstance(leaf, KeyError) for leaf in _flat(raised))
    report.add(
        "a bug is not hidden: 500", response.status_code == 500 and bug_seen,
        observed=f"when recommendations raises KeyError('items'): {show_response(response, client)}",
        expected="500, from the KeyError itself: an error nobody planned for reaches the server's error handling",
        hint=("An outage is `UpstreamError`; a KeyError is a bug, and an error marker hides it from every log: "
              "catch the outage by name (`return_exceptions=True` and `except Exception` take everything)."
              if response.status_code == 200 else
              "Only the service's own outage error means \"down\": a bug reported as a bad gateway is looked for "
              "in the wrong place. Let anything but `UpstreamError` propagate."),
    )
