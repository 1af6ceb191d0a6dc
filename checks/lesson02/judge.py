"""Lesson 02's checks: sessions, the dependency chain, attempts, overrides (the world is in world.py)."""

import asyncio
import random

from sqlalchemy import func, select

from ..harness import describe_exception, serve
from ..observe import json_body, show_response, status_hint
from ..runner import check

from .world import (
    User, Item, Attempt, SEED_USERS, stats, _new_key, database, _count, course_chain,
)

# ---- exercise 1: a session per request ------------------------------------------------------

CONCURRENT_REQUESTS = 8


def _scope_of(dependency_alias):
    """The `scope=` of the Depends inside an Annotated alias, and whether one was found."""
    for meta in getattr(dependency_alias, "__metadata__", ()):
        if hasattr(meta, "dependency") and hasattr(meta, "scope"):
            return meta.scope, True
    return None, False


def _new_errors(client, since: int) -> list[str]:
    return [describe_exception(error.exception) for error in client.app_errors[since:]]


def _swallowed(errors: list[str]) -> bool:
    return any("Response not awaited" in e or "'response' where it is not associated" in e for e in errors)


SWALLOWED_HINT = ("The route's exception vanished inside get_session: after rolling back, re-raise it (a bare "
                  "`raise`), so FastAPI can answer with the right status.")


@check("Lesson 02 · get_session: one session per request, committed or rolled back before the response", limit_s=20)
async def check_sessions(report, items_app, SessionDep=None):
    try:
        await _check_sessions(report, items_app, SessionDep)
    finally:
        await stats.close_leftovers()


async def _check_sessions(report, items_app, SessionDep):
    scope, found = _scope_of(SessionDep)
    if not found:
        report.fail("SessionDep is Annotated[AsyncSession, Depends(get_session, ...)]",
                    observed=f"SessionDep is {SessionDep!r}"[:200], expected="Annotated[AsyncSession, Depends(...)]",
                    hint="Give the alias a type and the dependency: `Annotated[AsyncSession, Depends(get_session, ...)]`.")
        return
    app = items_app(SessionDep)
    stats.reset()
    left_open: list[str] = []

    async def closed_after(phase: str) -> bool:
        """True when this phase closed every session it opened."""
        await stats.until_closed()
        closed = stats.closed >= stats.opened
        if not closed:
            left_open.append(f"{phase}: {stats.opened - stats.closed} of {stats.opened}")
        stats.reset()
        return closed

    def report_closing() -> None:
        only_errors = left_open and all("succeeded" not in p and "concurrent" not in p for p in left_open)
        report.add(
            "every session is closed, whatever happened", not left_open,
            observed="sessions left open " + "; ".join(left_open) if left_open else "",
            expected="as many closed as opened, in each case",
            hint=("Sessions stay open when an exception passes through: `async with` (or `finally`) closes them on "
                  "every path." if only_errors else "Open the session with `async with`, so it is closed whatever "
                  "happens."),
        )

    title = f"notebook-{random.randint(1000, 9999)}"
    async with serve(app, raise_app_exceptions=False) as client:
        # 1. success
        response = await client.post("/items", json={"title": title})
        body = json_body(response)
        if response.status_code != 201:
            report.fail("POST /items answers 201", observed=show_response(response, client), expected="201",
                        hint=status_hint(response, "POST", "/items", client))
            return
        saved = await _count(Item, Item.title == title)
        report.add(
            "a request that succeeds is committed",
            saved == 1 and isinstance(body, dict) and body.get("title") == title and type(body.get("id")) is int,
            observed=f"POST /items answered {show_response(response)}; rows titled {title!r} afterwards: {saved}",
            expected=f'201 {{"id": <int>, "title": "{title}"}}, and 1 row',
            hint="After the route has run without raising, commit the session the dependency yielded.",
        )
        await closed_after("after a request that succeeded")

        # 2. the route raises
        crash_title = title + "-crashed"
        before = len(client.app_errors)
        response = await client.post("/items", params={"fail": "crash"}, json={"title": crash_title})
        errors = _new_errors(client, before)
        partial = await _count(Item, Item.title == crash_title)
        if _swallowed(errors):
            hint = SWALLOWED_HINT
        elif partial:
            hint = ("The row was saved although the route raised: commit only when the route succeeded; when the "
                    "code after `yield` sees an exception, roll back and re-raise it.")
        else:
            hint = "Let the route's exception through get_session (roll back, then re-raise it)."
        report.add(
            "a request that raises is rolled back, and still answers 500",
            partial == 0 and response.status_code == 500 and any("payment service down" in e for e in errors),
            observed=(f"POST /items?fail=crash (adds a row, then raises RuntimeError) answered {response.status_code}; "
                      f"its row is in the database {partial} time(s)" + (f"; the app raised {errors[-1]}" if errors else "")),
            expected="500 from the route's RuntimeError, and no row",
            hint=hint,
        )
        if not await closed_after("after a route that raised"):
            return report_closing()  # an open session holds SQLite's write lock

        # 3. the route refuses with an HTTPException
        refused_title = title + "-refused"
        before = len(client.app_errors)
        response = await client.post("/items", params={"fail": "refused"}, json={"title": refused_title})
        errors = _new_errors(client, before)
        refused_rows = await _count(Item, Item.title == refused_title)
        body = json_body(response)
        if _swallowed(errors):
            hint = SWALLOWED_HINT
        elif response.status_code != 402:
            hint = ("An HTTPException is an exception too: get_session must re-raise the very exception it caught "
                    "(a bare `raise`), not a new one, so the client gets the route's status.")
        else:
            hint = "Roll back whatever exception the route raised, HTTPException included."
        report.add(
            "a route's HTTPException reaches the client unchanged, and nothing is saved",
            response.status_code == 402 and body == {"detail": "payment refused"} and refused_rows == 0,
            observed=f"POST /items?fail=refused answered {show_response(response, client)}; rows saved: {refused_rows}",
            expected='402 {"detail": "payment refused"}, and no row',
            hint=hint,
        )
        if not await closed_after("after a route that raised HTTPException"):
            return report_closing()  # an open session holds SQLite's write lock

        # 3b. a read for an item that does not exist: the route raises before anything is written
        missing = random.randint(10**6, 10**7)
        before = len(client.app_errors)
        response = await client.get(f"/items/{missing}")
        errors = _new_errors(client, before)
        report.add(
            "a request for a missing item answers 404, and its session is cleaned up",
            response.status_code == 404 and json_body(response) == {"detail": "No such item"},
            observed=f"GET /items/{missing} answered {show_response(response, client)}",
            expected='404 {"detail": "No such item"}',
            hint=SWALLOWED_HINT if _swallowed(errors) else
            "Let the route's HTTPException through get_session unchanged: roll back, then a bare `raise`.",
        )
        await closed_after("after a request for a missing item")

        # 4. the commit fails
        email = f"dee{random.randint(100, 999)}@example.com"
        first = await client.post("/users", json={"email": email, "name": "Dee"})
        before = len(client.app_errors)
        second = await client.post("/users", json={"email": email, "name": "Dee again"})
        errors = _new_errors(client, before)
        count = await _count(User, User.email == email)
        late = any("response already started" in e for e in errors)
        if scope is None:
            hint = ("The code after `yield` runs, by default, after the response has been sent: by then a failing "
                    "commit cannot change it. `help(Depends)`: which parameter decides when that code runs?")
        elif scope == "request":
            hint = ("scope='request' ends the dependency after the response has been sent: by then a failing "
                    "commit cannot change it. `help(Depends)` describes the other scope.")
        elif count == 0 and first.status_code == 201:
            hint = "Nothing was saved at all: commit when the route has succeeded."
        elif scope != "function":
            hint = (f"scope={scope!r} is not a scope FastAPI knows: it accepts it silently and ends the dependency "
                    "after the response. `help(Depends)` lists the two it knows.")
        elif _swallowed(errors):
            hint = SWALLOWED_HINT
        else:
            hint = "The commit's IntegrityError must leave get_session (roll back, re-raise) so the 409 handler sees it."
        report.add(
            "a failing commit reaches the client (409), before the response",
            first.status_code == 201 and second.status_code == 409 and count == 1,
            observed=(f"first POST /users {first.status_code}, the same email again {show_response(second, client)}; "
                      f"users with that email: {count}"
                      + ("; the commit failed after the response had gone out ('response already started')" if late else "")),
            expected="201, then 409 (the unique email), 1 user",
            hint=hint,
        )
        if not await closed_after("after a commit that failed"):
            return report_closing()  # an open session holds SQLite's write lock

        # 5. concurrent requests
        titles = [f"{title}-c{i}" for i in range(CONCURRENT_REQUESTS)]
        before = len(client.app_errors)
        responses = await asyncio.gather(*(client.post("/items", json={"title": t}) for t in titles))
        errors = _new_errors(client, before)
        sessions = len(set(stats.flushed_by))
        async with database() as db:
            rows = await db.scalar(select(func.count()).select_from(Item).where(Item.title.in_(titles)))
        codes = sorted({r.status_code for r in responses})
        report.add(
            f"{CONCURRENT_REQUESTS} concurrent requests get {CONCURRENT_REQUESTS} sessions, all committed",
            codes == [201] and sessions == CONCURRENT_REQUESTS and rows == CONCURRENT_REQUESTS,
            observed=(f"statuses {codes}; the requests wrote through {sessions} session(s); rows saved {rows}"
                      + (f"; first error: {errors[0]}" if errors else "")),
            expected=f"all 201, {CONCURRENT_REQUESTS} different sessions, {CONCURRENT_REQUESTS} rows",
            hint=("Each request had its own session, but not every row was committed: commit when the route has "
                  "succeeded." if codes == [201] and sessions == CONCURRENT_REQUESTS else
                  "One AsyncSession per request: open it inside get_session, at each call. A session shared by "
                  "requests that run at once is used by two of them at the same time, which it does not allow."),
        )
        await closed_after(f"after {CONCURRENT_REQUESTS} concurrent requests")
    report_closing()


# ---- exercise 2: current user → active user → admin ------------------------------------------

HINTS_401 = ("401 means 'we do not know who you are': no key, an unknown key, or a malformed header. Raise "
             "HTTPException(401) with the header `WWW-Authenticate: Bearer`.")


async def _seed_keys() -> dict[str, str]:
    async with database() as db:
        rows = (await db.execute(select(User.email, User.api_key))).all()
    return {email: key for email, key in rows}


def _odd_case(word: str) -> str:
    while True:
        cased = "".join(c.upper() if random.random() < 0.5 else c.lower() for c in word)
        if cased != word:
            return cased


@check("Lesson 02 · the dependency chain: current user → active user → admin", limit_s=15)
async def check_auth(report, auth_app, ActiveUser=None, AdminUser=None):
    app = auth_app(ActiveUser, AdminUser)
    async with serve(app, raise_app_exceptions=False) as client:
        keys = await _seed_keys()
        admin, user, inactive, inactive_admin = (keys[u[0]] for u in SEED_USERS)
        unknown = _new_key("eve")
        bob = {"email": SEED_USERS[1][0], "name": SEED_USERS[1][1]}
        scheme = _odd_case("Bearer")
        me, stats_path = "/me", "/admin/stats"
        cases = [
            # path, headers, expected status, who, hint when it is wrong
            (me, {}, 401, "no credentials", HINTS_401),
            (me, {"Authorization": f"Bearer {user}"}, 200, "an active user's bearer token",
             "Take the key from `Authorization: Bearer <key>` and find the user whose api_key equals it."),
            (me, {"X-API-Key": user}, 200, "an active user's X-API-Key",
             "Read the key from the X-API-Key header too (a `Header()` parameter named x_api_key)."),
            (me, {"Authorization": f"{scheme} {user}"}, 200, f"the scheme spelled {scheme!r}",
             "Auth schemes are case-insensitive: 'bearer' and 'Bearer' are the same (FastAPI's HTTPBearer compares "
             "them that way). Compare the scheme without case; the key itself stays exact."),
            (me, {"Authorization": f"Bearer {unknown}"}, 401, "an unknown bearer token", HINTS_401),
            (me, {"Authorization": f"Basic {user}"}, 401, "the key under another scheme (Basic)",
             "Only `Bearer` carries an API key here: check the scheme before you take the word after it."),
            (me, {"Authorization": "Bearer"}, 401, "a Bearer header without a token",
             "A malformed header is the client's mistake: answer 401, never crash on it."),
            (me, {"Authorization": f"Bearer {user} {user}"}, 401, "a token followed by another word",
             "A bearer token is one word: 'Bearer <key> <more>' is malformed, not the first word's key."),
            (me, {"Authorization": f"Bearer {user.upper()}"}, 401, "the key in upper case",
             "API keys are secrets compared exactly: no lower-casing, no case-insensitive match."),
            (me, {"X-API-Key": user[:-3]}, 401, "the start of a key",
             "Compare the whole key with `==`, not a prefix or a LIKE pattern."),
            (me, {"X-API-Key": ""}, 401, "an empty X-API-Key", HINTS_401),
            (me, {"X-API-Key": "' OR '1'='1"}, 401, "an X-API-Key that is SQL",
             "Never build SQL from a header: `select(User).where(User.api_key == key)` sends the key as a value."),
            (me, {"Authorization": f"Bearer {inactive}"}, 400, "an inactive user's token",
             "The key is valid but the user is inactive: the active-user dependency answers 400."),
            (stats_path, {}, 401, "no credentials", HINTS_401),
            (stats_path, {"Authorization": f"Bearer {user}"}, 403, "a non-admin's token",
             "403 means 'we know you, and you may not': a known, active user who is not an admin."),
            (stats_path, {"X-API-Key": inactive_admin}, 400, "an inactive admin's key",
             "The admin check builds on the active-user check: an inactive admin is refused (400) before "
             "anyone asks whether they are an admin."),
            (stats_path, {"X-API-Key": admin}, 200, "an admin's key",
             "An active admin gets the stats: get_admin returns the user it was given."),
        ]
        told_header = False
        for path, headers, expected, who, hint in cases:
            response = await client.get(path, headers=headers)
            name = f"GET {path} with {who} → {expected}"
            if response.status_code >= 500:
                errors = client.errors_for(path)
                unfinished = bool(errors) and isinstance(errors[-1].exception, NotImplementedError)
                hostile_input = expected == 401 and not unfinished and headers and not (
                    errors and "'NoneType' object has no attribute" in str(errors[-1].exception))
                raised = describe_exception(errors[-1].exception) if errors else ""
                lost_return = "'NoneType' object has no attribute" in raised
                report.fail(name, observed=show_response(response, client), expected=str(expected),
                            hint=("A dependency of the chain handed on None: each one must `return` the user it "
                                  "checked, or the next link (and the route) gets None." if lost_return else
                                  hint + " (Your code crashed on this header.)" if hostile_input
                                  else status_hint(response, "GET", path, client)))
                if not hostile_input:  # broken code, not a malformed header: one report of it is enough
                    return
                continue
            if response.status_code != expected:
                report.fail(name, observed=show_response(response), expected=str(expected), hint=hint)
                continue
            body = json_body(response)
            if expected == 401 and "bearer" not in response.headers.get("www-authenticate", "").lower():
                if not told_header:  # once is enough
                    report.fail(name + " with WWW-Authenticate", observed=f"headers: {dict(response.headers)}",
                                expected="WWW-Authenticate: Bearer",
                                hint="A 401 tells the client how to authenticate, in the header `WWW-Authenticate: "
                                     "Bearer`: pass `headers=` to HTTPException.")
                told_header = True
                continue
            if path == me and expected == 200 and body != bob:
                report.fail(name, observed=show_response(response), expected=str(bob),
                            hint="/me returns the user the key belongs to.")
                continue
            wanted = {"users": len(SEED_USERS), "asked_by": SEED_USERS[0][0]}
            if path == stats_path and expected == 200 and body != wanted:
                report.fail(name, observed=show_response(response), expected=str(wanted),
                            hint="The stats name the admin who asked: get_admin returns the user it was given.")
                continue
            report.add(name, True)


# ---- exercise 3: which dependencies share the request's session -------------------------------

CONCURRENT_ORDERS = 4


async def _order_rows(title: str) -> dict:
    async with database() as db:
        return {
            "order": await db.scalar(select(func.count()).select_from(Item).where(Item.title == title)),
            "hold": await db.scalar(select(func.count()).select_from(Item).where(Item.title == f"hold: {title}")),
            "attempt": await db.scalar(select(func.count()).select_from(Attempt).where(Attempt.title == title)),
        }


def _rows_text(rows: dict) -> str:
    return ", ".join(f"{what} {count}" for what, count in rows.items())


ATTEMPT_SHARED_HINT = ("The attempt was written through the request's session, so the refusal rolled it back with "
                       "the order. Within a request, every dependency that asks for the same dependency the same way "
                       "gets the same value: this one needs a session of its own.")
ATTEMPT_UNCOMMITTED_HINT = ("The attempt had a session of its own, but was not committed before the route failed: "
                            "the route's exception reaches every yield dependency, and a session that sees it rolls "
                            "back. Commit the attempt before the route runs.")


@check("Lesson 02 · a record that outlives the request's transaction: share the session, or not?", limit_s=15)
async def check_attempts(report, orders_app, record_attempt=None, SessionDep=None):
    try:
        await _check_attempts(report, orders_app, record_attempt, SessionDep)
    finally:
        await stats.close_leftovers()


async def _check_attempts(report, orders_app, record_attempt, SessionDep):
    app = orders_app(SessionDep, record_attempt)
    stats.reset()
    title = f"order-{random.randint(1000, 9999)}"
    async with serve(app, raise_app_exceptions=False) as client:
        ok = await client.post("/orders", json={"title": title})
        if ok.status_code != 201:
            locked = "database is locked" in show_response(ok, client)
            report.fail("POST /orders answers 201", observed=show_response(ok, client), expected="201",
                        hint=("Two sessions of one request wrote at once, and SQLite lets one transaction write at a "
                              "time: the attempt's session was still open when the order's wrote (or the other way "
                              "round). Commit the attempt's session before the route runs." if locked
                              else status_hint(ok, "POST", "/orders", client)))
            return
        rows = await _order_rows(title)
        report.add(
            "an order that is paid: the order, its hold and one attempt are saved",
            rows == {"order": 1, "hold": 1, "attempt": 1},
            observed=f"rows afterwards: {_rows_text(rows)}", expected="order 1, hold 1, attempt 1",
            hint=("record_attempt must write an Attempt row to the database, once per request." if rows["attempt"] != 1
                  else "The order itself was not saved: leave the route's session to get_session."),
        )
        await stats.until_closed()
        sessions = stats.opened  # read for the hints: one session means the attempt shared the request's

        refused = f"{title}-refused"
        before = len(client.app_errors)
        response = await client.post("/orders", params={"pay": "refused"}, json={"title": refused})
        errors = _new_errors(client, before)
        rows = await _order_rows(refused)
        shared = sessions < 2
        if response.status_code != 402 or json_body(response) != {"detail": "payment refused"}:
            hint = (SWALLOWED_HINT if _swallowed(errors) else
                    "The refusal must reach the client unchanged (402): let the route's exception through.")
        elif rows["hold"] or rows["order"]:
            hint = ("The hold of a refused order was saved: committing the request's session from record_attempt "
                    "commits whatever else was in it. Give the attempt a session of its own, and commit that one.")
        elif rows["attempt"] != 1:
            hint = ATTEMPT_SHARED_HINT if shared else ATTEMPT_UNCOMMITTED_HINT
        else:
            hint = ""
        report.add(
            "a refused order: 402, no order and no hold, and still one attempt",
            response.status_code == 402 and json_body(response) == {"detail": "payment refused"}
            and rows == {"order": 0, "hold": 0, "attempt": 1},
            observed=f"POST /orders?pay=refused answered {show_response(response, client)}; rows: {_rows_text(rows)}",
            expected='402 {"detail": "payment refused"}; order 0, hold 0, attempt 1',
            hint=hint,
        )

        titles = [f"{title}-c{i}" for i in range(CONCURRENT_ORDERS)]
        responses = await asyncio.gather(*(client.post("/orders", json={"title": t}) for t in titles))
        counts = [await _order_rows(t) for t in titles]
        codes = sorted({r.status_code for r in responses})
        report.add(
            f"{CONCURRENT_ORDERS} orders at once: each saved with its attempt",
            codes == [201] and all(c == {"order": 1, "hold": 1, "attempt": 1} for c in counts),
            observed=f"statuses {codes}; attempts per order {[c['attempt'] for c in counts]}",
            expected="all 201, one attempt each",
            hint="A session for the attempt must be new in each request (opened at each call), never one kept between "
                 "requests.",
        )
        await stats.until_closed()
        report.add(
            "every session is closed", stats.closed == stats.opened,
            observed=f"{stats.opened - stats.closed} of {stats.opened} left open" if stats.closed < stats.opened else "",
            expected="as many closed as opened",
            hint="Open the attempt's session with `async with` (or ask get_session for it), so it is closed.",
        )


# ---- exercise 4: overrides ---------------------------------------------------------------------

class _Probe(Exception):
    """Raised by the check inside an `as_user` block."""


def _ghost(tag: str, active: bool, admin: bool) -> User:
    return User(id=random.randint(1000, 9999), email=f"{tag}{random.randint(10, 99)}@example.com",
                name=tag.title(), api_key="-", is_active=active, is_admin=admin)


def _describe_overrides(overrides: dict, expected: dict, names: dict) -> str:
    """What differs between two override dicts, in words."""
    said = []
    for k in set(expected) | set(overrides):
        name = names.get(k, getattr(k, "__name__", repr(k)))
        if k not in overrides:
            said.append(f"{name}'s override was removed")
        elif k not in expected:
            said.append(f"an override of {name} was left behind" + (" (mapped to None)" if overrides[k] is None else ""))
        elif overrides[k] is not expected[k]:
            said.append(f"{name} now maps to something else")
    return "; ".join(said) or "as before"


def _outer_hint(seen, during: dict, before: dict, get_current_user, earlier_email: str) -> str:
    """Why /me did not answer as the user given to as_user, from what the overrides held in the block."""
    added = [k for k in during if k not in before]
    if any(type(k).__name__ == "Depends" for k in added):
        return ("The key of dependency_overrides is the dependency function itself (get_current_user), not a "
                "Depends(...) object.")
    if added and during.get(get_current_user) is before.get(get_current_user):
        names = ", ".join(getattr(k, "__name__", repr(k)) for k in added)
        return (f"You replaced {names}, not the first link of the chain: replace get_current_user — the function "
                "itself — so the rules after it (active, admin) still run.")
    if seen == (200, earlier_email) and during == before:
        return "Nothing was overridden while the block ran: set the override before `yield`."
    if seen[0] == 401:
        return ("/me answered as if no override was there: map get_current_user — the function itself, not a "
                "Depends(...) — to a function that returns the given user.")
    return "Map get_current_user to a function (taking no arguments) that returns the user given to as_user."


@check("Lesson 02 · dependency_overrides: run as someone else, then put things back", limit_s=10)
async def check_overrides(report, as_user, auth_app, get_current_user=None):
    ActiveUser, AdminUser = course_chain(get_current_user)
    app = auth_app(ActiveUser, AdminUser)

    async def unrelated_dependency():
        return None

    def unrelated_override():
        return None

    earlier = _ghost("earlier", True, False)  # an override someone installed before (a fixture, say)

    def earlier_override():
        return earlier

    names = {get_current_user: "get_current_user", unrelated_dependency: "another dependency"}
    outer, inner = _ghost("outer", True, True), _ghost("inner", False, False)

    async with serve(app, raise_app_exceptions=False) as client:
        async def whoami() -> tuple[int, object]:
            response = await client.get("/me")
            body = json_body(response)
            if response.status_code == 200 and isinstance(body, dict):
                return 200, body.get("email")
            shown = show_response(response, client)
            return response.status_code, shown.split(" ", 1)[-1] if shown.startswith(str(response.status_code) + " ") else shown

        app.dependency_overrides[get_current_user] = earlier_override
        app.dependency_overrides[unrelated_dependency] = unrelated_override
        before = dict(app.dependency_overrides)
        seen: dict[str, tuple] = {}
        try:
            with as_user(app, outer):
                during = dict(app.dependency_overrides)
                seen["outer"] = await whoami()
                with as_user(app, inner):
                    seen["inner"] = await whoami()
                seen["outer again"] = await whoami()
        except Exception as exc:
            report.fail("as_user(app, user) works as a `with` block", observed=describe_exception(exc),
                        hint=("as_user is used with `with`, not `async with`: @contextlib.contextmanager on a plain "
                              "generator, not @asynccontextmanager." if "AsyncGeneratorContextManager" in str(exc) else
                              "as_user is a generator turned into a context manager (@contextlib.contextmanager): "
                              "set the override, `yield`, then put things back."))
            return
        after_nesting = dict(app.dependency_overrides)
        seen["after"] = await whoami()

        outer_ok = seen["outer"] == (200, outer.email)
        if not report.add(
            "inside the block, requests run as the given user", outer_ok,
            observed=f"/me → {seen['outer'][0]} {seen['outer'][1]}",
            expected=f"/me → 200 {outer.email}",
            hint=_outer_hint(seen["outer"], during, before, get_current_user, earlier.email),
        ):
            return
        report.add(
            "the user still goes through the checks that follow (an inactive user is refused)",
            seen["inner"][0] == 400,
            observed=f"/me as an inactive user → {seen['inner'][0]} {seen['inner'][1]}",
            expected="400 (the active-user check still runs)",
            hint=("The active-user check did not run: replace only the first link of the chain, the dependency that "
                  "finds the user, so the rules after it still apply." if seen["inner"][0] == 200 else
                  "Map get_current_user to a function that returns the user given to as_user."),
        )
        report.add(
            "a nested block gives the outer user back when it ends",
            seen["outer again"] == (200, outer.email),
            observed=f"/me after the inner block → {seen['outer again'][0]} {seen['outer again'][1]}",
            expected=f"200 {outer.email}",
            hint=("Put back what was there before the block (the outer block's override), instead of deleting it. "
                  "Keep what you saved in the generator's own local variables."),
        )
        report.add(
            "afterwards, app.dependency_overrides is as it was (an earlier override kept, others untouched)",
            after_nesting == before and seen["after"] == (200, earlier.email),
            observed=(f"{_describe_overrides(after_nesting, before, names)}; "
                      f"/me → {seen['after'][0]} {seen['after'][1]}"),
            expected=f"the same overrides; /me → 200 {earlier.email} (the earlier override)",
            hint=("After both blocks the outer block's user is still there: what the outer block saved was "
                  "overwritten by the inner one. Keep it in the generator's own local variables."
                  if seen["after"][1] == outer.email else
                  "Leave every other override alone (no clear()): restore only get_current_user's."
                  if set(before) - set(after_nesting) - {get_current_user} else
                  "The earlier override of get_current_user was lost: save what was there (or that nothing was) and "
                  "put exactly that back." if get_current_user not in after_nesting else
                  "Save what get_current_user mapped to before the block (or that nothing did) and restore exactly "
                  "that; leave every other override alone."),
        )

        # even if the block raises (from the state the check set up, whatever the blocks above left)
        restored_without_raising = after_nesting == before
        app.dependency_overrides = dict(before)
        escaped = None
        try:
            with as_user(app, outer):
                raise _Probe("raised inside the block")
        except _Probe:
            escaped = True
        except Exception as exc:
            escaped = describe_exception(exc)
        else:
            escaped = False
        report.add(
            "a block that raises: the exception goes on, the overrides are put back",
            escaped is True and dict(app.dependency_overrides) == before,
            observed=("the exception did not leave the block (as_user swallowed it); " if escaped is False else
                      f"as_user raised {escaped} instead; " if escaped is not True else "")
            + _describe_overrides(dict(app.dependency_overrides), before, names),
            expected="the exception raised to the caller, and the overrides as they were",
            hint=("Don't catch the exception in as_user: `try: yield ... finally: restore` puts things back and lets "
                  "it go on." if escaped is False else
                  "Put things back in a `finally:` around the `yield`, so it runs even when the block raises."
                  if restored_without_raising else
                  "What is put back is not what was there (see above) — with or without an exception."),
        )

        # no earlier override: nothing may be left behind
        before = {key: value for key, value in before.items() if key is not get_current_user}
        app.dependency_overrides = dict(before)
        try:
            with as_user(app, outer):
                pass
        except Exception as exc:
            report.fail("as_user works when no earlier override exists", observed=describe_exception(exc),
                        hint="Check whether get_current_user was overridden before, instead of assuming it was.")
            return
        report.add(
            "without an earlier override, none is left behind",
            dict(app.dependency_overrides) == before,
            observed=_describe_overrides(dict(app.dependency_overrides), before, names),
            expected="no override of get_current_user afterwards",
            hint=("If nothing was there before, remove the key: mapping it to None is an override too, and FastAPI "
                  "would call None."),
        )
