"""Lesson 05, exercise 4's check: CORS lets app.example.com in with credentials and nothing else,
probed with hostile origins, methods and headers.
"""

from __future__ import annotations

import random

from ..harness import serve
from ..runner import check
from .judge_common import _cause_hint, short_error
from .world import ALLOWED_ORIGIN, course_admin_app


# ---- exercise 4: CORS ------------------------------------------------------------------------

def lookalike_origins() -> list[tuple[str, str]]:
    """(origin, why it is another site) — each differs from ALLOWED_ORIGIN in one way."""
    return [
        ("https://app.example.com.evil.io", "the allowed origin is only its prefix"),
        ("https://app.example.co", "it is only the start of the allowed origin"),
        ("https://evilapp.example.com", "it only ends like the allowed host"),
        ("http://app.example.com", "another scheme is another origin"),
        ("https://app.example.com:8443", "another port is another origin"),
        ("https://sub.app.example.com", "a subdomain is another origin"),
        ("https://appxexample.com", "a regex with unescaped dots matches it"),
        ("null", "'null' is what sandboxed iframes and file:// pages send: anyone can"),
        (f"https://evil{random.randint(10, 99)}.example", "an unrelated site"),
    ]


def _cors_config(app) -> dict:
    """The CORSMiddleware options the learner used (for hints only; verdicts come from responses)."""
    for entry in getattr(app, "user_middleware", []):
        if getattr(entry, "cls", None).__name__ == "CORSMiddleware":
            return dict(entry.kwargs)
    return {}


def _preflight(origin: str, method: str = "GET", headers: str | None = "X-API-Key") -> dict:
    out = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        out["Access-Control-Request-Headers"] = headers
    return out


def _listed(header_value: str, wanted: str) -> bool:
    items = [part.strip().lower() for part in (header_value or "").split(",")]
    return wanted.lower() in items or "*" in items


@check("Lesson 05 · CORS lets app.example.com in with credentials, and nothing else", limit_s=15)
async def check_cors(report, lesson_app, add_cors):
    app = course_admin_app(lesson_app)
    try:
        returned = add_cors(app)
    except Exception as exc:  # noqa: BLE001
        report.fail("add_cors(app) runs", observed=short_error(exc), expected="no error", hint=_cause_hint(exc))
        return
    app = returned if returned is not None else app
    config = _cors_config(app)
    async with serve(app, raise_app_exceptions=False) as client:
        # 1. The allowed origin: preflights for GET and POST, with X-API-Key, with credentials.
        failures = []
        for method, headers in (("GET", "X-API-Key"), ("POST", "X-API-Key, Content-Type")):
            r = await client.options("/items/7", headers=_preflight(ALLOWED_ORIGIN, method, headers))
            ok = (200 <= r.status_code < 300 and r.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
                  and r.headers.get("access-control-allow-credentials") == "true"
                  and _listed(r.headers.get("access-control-allow-methods", ""), method)
                  and all(_listed(r.headers.get("access-control-allow-headers", ""), h.strip()) or h.strip() == "Content-Type"
                          for h in headers.split(",")))
            if not ok:
                failures.append(f"{method}: {r.status_code} {r.text[:40]!r}; allow-origin "
                                f"{r.headers.get('access-control-allow-origin')!r}, credentials "
                                f"{r.headers.get('access-control-allow-credentials')!r}")
        origins = config.get("allow_origins", ())
        one_string = isinstance(origins, str)  # `origin in "https://..."` is a substring test
        origins = [origins] if one_string else list(origins)
        if any(isinstance(o, str) and o.rstrip("/") != o for o in origins):
            hint = "An origin has no path: 'https://app.example.com', without the trailing slash."
        elif config and not config.get("allow_credentials"):
            hint = ("The browser sends cookies only when the answer says `Access-Control-Allow-Credentials: true`: "
                    "`allow_credentials=True`.")
        elif failures and all(f.startswith("POST") for f in failures):
            hint = "Allow both methods the app uses: `allow_methods=[\"GET\", \"POST\"]`."
        else:
            hint = ("`CORSMiddleware(allow_origins=[ALLOWED_ORIGIN], allow_credentials=True, allow_methods=[...], "
                    "allow_headers=[\"X-API-Key\"])`; an origin is scheme + host (+ port), exactly.")
        if not report.add("app.example.com: preflights for GET and POST with X-API-Key pass, with credentials",
                          not failures, observed="; ".join(failures[:2]),
                          expected=f"2xx, Access-Control-Allow-Origin {ALLOWED_ORIGIN}, credentials true, "
                                   "the method and X-API-Key allowed", hint=hint):
            return
        simple = await client.get("/items/7", headers={"Origin": ALLOWED_ORIGIN})
        vary = simple.headers.get("vary", "")
        ok = simple.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN \
            and simple.headers.get("access-control-allow-credentials") == "true" and _listed(vary, "origin")
        report.add(
            "app.example.com: responses carry its origin, credentials, and Vary: Origin", ok,
            observed="" if ok else f"allow-origin {simple.headers.get('access-control-allow-origin')!r}, credentials "
                     f"{simple.headers.get('access-control-allow-credentials')!r}, vary {vary!r}",
            expected=f"{ALLOWED_ORIGIN}, true, Vary listing Origin",
            hint="The same CORSMiddleware answers ordinary requests; `Vary: Origin` tells caches the answer "
                 "depends on the origin.",
        )

        # 2. Lookalike origins: no Access-Control-Allow-Origin, preflight or not.
        leaks = []
        for origin, why in lookalike_origins():
            pre = await client.options("/items/7", headers=_preflight(origin))
            get = await client.get("/items/7", headers={"Origin": origin})
            for kind, r in (("preflight", pre), ("GET", get)):
                allowed = r.headers.get("access-control-allow-origin")
                if allowed and (kind == "GET" or 200 <= r.status_code < 300):
                    leaks.append((origin, why, kind, allowed))
                    break
        if leaks:
            origin, why, kind, allowed = leaks[0]
            if one_string:
                hint = (f"`allow_origins` takes a list of origins. Given one string, CORSMiddleware tests "
                        f"`origin in \"{ALLOWED_ORIGIN}\"`, a search in the text: any piece of it passes, "
                        f"{origin} too.")
            elif "*" in origins and config.get("allow_credentials"):
                hint = ("With `allow_credentials=True`, `allow_origins=[\"*\"]` makes Starlette echo ANY origin back, "
                        "so any site can read your users' data with their cookies. List the one origin.")
            elif config.get("allow_origin_regex"):
                hint = (f"Your allow_origin_regex also matches {origin} ({why}): escape the dots and spell out "
                        "scheme and port — or list the origin exactly.")
            else:
                hint = f"{origin} is not {ALLOWED_ORIGIN}: {why}. Allow exactly one origin."
        else:
            hint = ""
        report.add(
            "lookalike origins get no Access-Control-Allow-Origin", not leaks,
            observed="; ".join(f"{o} ({k}) got {a!r}" for o, _, k, a in leaks[:2]),
            expected="no such header for: " + ", ".join(o for o, _ in lookalike_origins()[:7]), hint=hint,
        )

        # 3. Methods and headers beyond GET/POST and X-API-Key are refused.
        widened = []
        for method, headers in (("DELETE", "X-API-Key"), ("PUT", None), ("GET", "X-Admin-Override")):
            r = await client.options("/items/7", headers=_preflight(ALLOWED_ORIGIN, method, headers))
            granted = 200 <= r.status_code < 300 and _listed(r.headers.get("access-control-allow-methods", ""), method) \
                and (headers is None or all(_listed(r.headers.get("access-control-allow-headers", ""), h.strip())
                                            for h in headers.split(",")))
            if granted:
                widened.append(f"{method}" + (f" with {headers}" if headers else "") + f" → {r.status_code}")
        report.add(
            "other methods and headers are refused", not widened, observed="; ".join(widened),
            expected="preflights for DELETE, PUT, or an X-Admin-Override header refused",
            hint=("`[\"*\"]` opens every method or header to the allowed site's scripts: list GET and POST, and "
                  "X-API-Key." if "*" in config.get("allow_methods", ()) or "*" in config.get("allow_headers", ())
                  else "List only the methods (GET, POST) and headers (X-API-Key) the app needs."),
        )

        # 4. CORS answers before the guard: a preflight carries no key, and the 401 must be readable.
        pre = await client.options("/admin/stats", headers=_preflight(ALLOWED_ORIGIN))
        denied = await client.get("/admin/stats", headers={"Origin": ALLOWED_ORIGIN})
        ok = 200 <= pre.status_code < 300 and denied.status_code == 401 \
            and denied.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
        report.add(
            "a preflight to /admin needs no key, and the 401 is readable by app.example.com", ok,
            observed="" if ok else f"preflight {pre.status_code}; GET without key {denied.status_code}, allow-origin "
                     f"{denied.headers.get('access-control-allow-origin')!r}",
            expected=f"preflight 2xx; 401 with allow-origin {ALLOWED_ORIGIN}",
            hint="Browsers send preflights without keys or cookies: CORS must run before the guard — added last.",
        )
