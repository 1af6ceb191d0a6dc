"""Lesson 05, exercise 3's check: /admin is guarded, 401 for every wrong key, and the 401 is
tagged like any response (the guard sits inside the request-context middleware).
"""

from __future__ import annotations

import random
import secrets

from ..harness import serve
from ..runner import check
from .judge_common import (
    _Records, _app_error, _cause_hint, _client_id, _detail, _process_ms, observed, short_error,
)
from .world import API_KEY


# ---- exercise 3: the guard, and where it sits -------------------------------------------------

def _key_probes() -> list[tuple[str, dict, str]]:
    """(what, request kwargs, hint when it got in) for keys that must not open /admin."""
    wrong = "key-" + secrets.token_hex(12)
    return [
        ("no key", {}, "A request without the header must get 401 too."),
        ("an empty key", {"headers": {"X-API-Key": ""}},
         "An empty header is still a wrong key: compare the value with API_KEY, do not just test that it is there."),
        ("another key", {"headers": {"X-API-Key": wrong}},
         "Any value but API_KEY must fail: compare the header's value with API_KEY."),
        ("the key in upper case", {"headers": {"X-API-Key": API_KEY.upper()}},
         "Keys are case-sensitive: compare exactly, without `.lower()`."),
        ("the key's first half", {"headers": {"X-API-Key": API_KEY[: len(API_KEY) // 2]}},
         "Compare the whole value: a prefix of the key is not the key."),
        ("the key plus more", {"headers": {"X-API-Key": API_KEY + "0"}},
         "Compare the whole value: `in` or `startswith` lets longer values through."),
        ("bytes that are not ASCII", {"headers": {"X-API-Key": b"\xff\xfe" + secrets.token_hex(4).encode()}},
         "Compare the whole value with API_KEY."),
        ("the key as a bearer token", {"headers": {"Authorization": f"Bearer {API_KEY}"}},
         "Only the X-API-Key header counts."),
        ("the key in the query string", {"params": {"api_key": API_KEY, "x-api-key": API_KEY}},
         "Only the X-API-Key header counts: a key in the URL ends up in logs and browser history."),
    ]


def _guard_500_hint(exc) -> str:
    name = type(exc).__name__ if exc is not None else ""
    if "HTTPException" in name:
        return ("Exception handlers sit inside the middleware stack, around the routes: an HTTPException raised "
                "in middleware reaches no handler. Return a `JSONResponse(status_code=401, ...)` instead.")
    if isinstance(exc, TypeError) and "non-ASCII" in str(exc):
        return ("`secrets.compare_digest` refuses str with non-ASCII characters, and a client chooses what it "
                "sends: compare bytes (`.encode()` both sides).")
    if isinstance(exc, TypeError) and "NoneType" in str(exc) and "not callable" not in str(exc):
        return "With no header, `.get()` gives None: compare a default (`\"\"`) instead, so a missing key is a 401."
    return _cause_hint(exc)


@check("Lesson 05 · /admin is guarded: 401 for every wrong key, tagged like any response", limit_s=15)
async def check_guard(report, admin_api):
    try:
        app = admin_api()
    except Exception as exc:  # noqa: BLE001
        report.fail("admin_api() builds the app", observed=short_error(exc), expected="an app",
                    hint=_cause_hint(exc))
        return
    if app is None or not callable(app):
        report.fail("admin_api() builds the app", observed=f"it returned {app!r:.60}", expected="the app",
                    hint="End with `return app`.")
        return
    async with serve(app, raise_app_exceptions=False) as client:
        # 1. Wrong keys on /admin/stats.
        let_in, bad_401 = [], []
        for what, kwargs, hint in _key_probes():
            with _Records() as records:
                response = await client.get("/admin/stats", **kwargs)
            if response.status_code >= 500:
                exc = _app_error(client, "/admin/stats", records)
                report.fail(f"GET /admin/stats with {what} → 401", observed=observed(response, client),
                            expected="401", hint=_guard_500_hint(exc))
                return
            if response.status_code != 401:
                let_in.append((what, response, hint))
            elif not isinstance(_detail(response), str) or not _detail(response):
                bad_401.append((what, response))
            elif API_KEY in response.text:
                bad_401.append((what, response))
        if let_in:
            what, response, hint = let_in[0]
            report.fail(
                "every wrong key gets 401", observed="; ".join(f"{w} → {r.status_code}" for w, r, _ in let_in[:3]),
                expected="401 for each of: " + ", ".join(w for w, _, _ in _key_probes()),
                hint=("403 means \"known, but not allowed\"; no key or a wrong key is 401 (not authenticated)."
                      if response.status_code == 403 else hint))
        else:
            report.add("every wrong key gets 401", True, observed=f"{len(_key_probes())} kinds of wrong key")
        if not bad_401:
            report.add("the 401 is JSON with a `detail` message, and does not show the key", True)
        else:
            what, response = bad_401[0]
            report.fail("the 401 is JSON with a `detail` message, and does not show the key",
                        observed=f"{what} → {observed(response)}", expected='{"detail": "..."}',
                        hint=("Never echo the expected key." if API_KEY in response.text else
                              "Answer like FastAPI does: `JSONResponse({\"detail\": ...}, status_code=401)`."))

        # 2. The whole section, and nothing else.
        unknown = f"/admin/reports-{random.randint(100, 999)}"
        section = ["/admin", "/admin/stats", unknown, "/%61dmin/stats"]
        open_doors = []
        for path in section:
            response = await client.get(path)
            if response.status_code < 400 or response.status_code == 404:
                open_doors.append((path, response.status_code))
        hint = "Guard the section by path, before any route runs: `/admin` and everything under `/admin/`."
        if any(p == "/admin/stats" for p, _ in open_doors):
            hint = "Without any key the guard let the request through: see the first item."
        elif any(p == "/admin" for p, _ in open_doors):
            hint = "`/admin` itself is in the section: a test for `startswith(\"/admin/\")` misses it."
        elif any(p == unknown and s == 404 for p, s in open_doors):
            hint = ("A path no route has answered 404 without a key: so a scan learns which admin pages exist. "
                    "The guard goes by path, for every request, found or not.")
        elif any(p.startswith("/%") for p, _ in open_doors):
            hint = ("The route matched the decoded path (`scope[\"path\"]`, `request.url.path`); your guard "
                    "looked at another form of it. Guard the path the router uses.")
        report.add("the whole /admin section needs the key", not open_doors,
                   observed="; ".join(f"{p} → {s}" for p, s in open_doors), expected=f"401 for {', '.join(section)}",
                   hint=hint)
        right = {"X-API-Key": API_KEY}
        checks = [("/admin/stats", right, 200), ("/admin", right, 200), (unknown, right, 404),
                  ("/items/7", {}, 200), ("/admin-guide", {}, 200), ("/items/7", {"X-API-Key": "nope"}, 200)]
        wrong, crashed = [], None
        for path, headers, status in checks:
            with _Records() as records:
                response = await client.get(path, headers=headers)
            if response.status_code != status:
                wrong.append(f"{path} {'with the key' if headers == right else 'with a wrong key' if headers else 'without a key'} "
                             f"→ {response.status_code}")
                if response.status_code >= 500 and crashed is None:
                    crashed = _app_error(client, path, records)
        report.add(
            "the right key opens the section; other paths pass untouched", not wrong, observed="; ".join(wrong[:3]),
            expected="the key: /admin/stats 200, /admin 200, unknown 404; no key: /items/7 and /admin-guide 200",
            hint=(_guard_500_hint(crashed) if crashed is not None else
                  "`startswith(\"/admin\")` also matches /admin-guide: compare whole path segments."
                  if any(w.startswith("/admin-guide") for w in wrong) else
                  "Only the /admin section needs the key; everywhere else, call the app as it is."
                  if any(w.startswith("/items") for w in wrong) else "With the right key, call the app unchanged."),
        )

        # 3. Order: the 401 is an answer like any other, tagged by RequestContext.
        rid = _client_id()
        denied = await client.get("/admin/stats", headers={"X-Request-ID": rid})
        if not 400 <= denied.status_code < 500:
            return  # the guard let it in: the first item says so
        tagged = denied.headers.get("x-request-id") == rid and _process_ms(denied) is not None
        report.add(
            "the 401 carries X-Request-ID and X-Process-Time", tagged,
            observed="" if tagged else f"{denied.status_code}; X-Request-ID {denied.headers.get('x-request-id')!r}, "
                                       f"X-Process-Time {denied.headers.get('x-process-time')!r}",
            expected=f"the 401 with X-Request-ID {rid} and a process time",
            hint="The middleware added last runs first: your guard answered before RequestContext saw the request. "
                 "Add the guard first, RequestContext after it.",
        )
