"""Lesson 03, validators: Pydantic v2 models that accept exactly the right input and a
response model that never leaks a secret.

Each check builds the lesson's app around the learner's model and the course's own version
of the other model, so the two exercises are judged apart. Bad payloads come from a fixed
table and from hypothesis, new ones each run; the course's reference model is the oracle
that says whether a generated payload should be accepted.
"""

from __future__ import annotations

import hashlib
import json
import random
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .harness import serve
from .observe import json_body, show_response, status_hint
from .runner import check

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Base(DeclarativeBase):
    pass


class UserRecord(Base):
    """How the app stores a user: an ORM object, with the password's hash."""

    __tablename__ = "signup_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))
    display_name: Mapped[str] = mapped_column(String(40))
    age: Mapped[int]
    password_hash: Mapped[str] = mapped_column(String(64))


def hash_password(password: str) -> str:
    return hashlib.sha256(b"course-salt:" + password.encode()).hexdigest()


# ---- the course's own models: the oracle for generated payloads, and the other half of each app --

class _SignupIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    email: str
    password: str = Field(min_length=12, max_length=128)
    password_confirm: str
    display_name: str = Field(min_length=1, max_length=40)
    age: int = Field(ge=13, le=130)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        value = value.lower()
        if not EMAIL.match(value):
            raise ValueError("not an email address")
        return value

    @field_validator("password")
    @classmethod
    def _strong(cls, value: str) -> str:
        if not (any(c.isalpha() for c in value) and any(c.isdigit() for c in value)):
            raise ValueError("use letters and digits")
        return value

    @model_validator(mode="after")
    def _confirmed(self):
        if self.password != self.password_confirm:
            raise ValueError("passwords do not match")
        return self


class _UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    display_name: str


def _valid(**changes) -> dict:
    password = f"Tulips{random.randint(100000, 999999)}x"
    payload = {"email": "Robin@Example.org", "password": password, "password_confirm": password,
               "display_name": "Robin", "age": 34}
    payload.update(changes)
    return payload


def _locs(response) -> list[list]:
    body = json_body(response)
    if isinstance(body, dict) and isinstance(body.get("detail"), list):
        return [list(error.get("loc", [])) for error in body["detail"] if isinstance(error, dict)]
    return []


def _v1_spellings(model) -> list[str]:
    found = []
    if isinstance(model, type) and "Config" in model.__dict__:
        found.append("class Config")
    decorators = getattr(model, "__pydantic_decorators__", None)
    if decorators is not None and decorators.validators:
        found.append("@validator")
    if decorators is not None and decorators.root_validators:
        found.append("@root_validator")
    return found


def _report_spellings(report, model, name: str) -> None:
    spellings = _v1_spellings(model)
    report.add(f"{name} uses Pydantic v2 spellings", not spellings,
               observed=f"found {', '.join(spellings)}" if spellings else "",
               expected="model_config = ConfigDict(...), @field_validator, @model_validator",
               hint="The v1 spellings still run but warn, and some (orm_mode) silently stop working.")


# ---- generated payloads -------------------------------------------------------------------

FIELDS = ["email", "password", "password_confirm", "display_name", "age"]


def generated_payloads(count: int) -> list:
    """JSON values shaped like signups and unlike them, new ones each run (hypothesis)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.text(max_size=60) | st.floats(
        allow_nan=False, allow_infinity=False)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=5), inner, max_size=3), max_leaves=6)
    good = _valid()
    near_valid = st.fixed_dictionaries({}, optional={f: st.just(good[f]) | values for f in FIELDS})
    payloads = st.one_of(
        st.dictionaries(st.sampled_from(FIELDS + ["is_admin", "id", "role"]), values, max_size=7),
        near_valid.map(lambda p: {**good, **p}),  # mostly right, one or more values wrong
        values,  # not even an object
    )
    found: list = []

    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(payloads)
    def collect(payload):
        found.append(payload)

    collect()
    return found


def _accepted_by_reference(payload) -> bool:
    try:
        _SignupIn.model_validate(payload)
        return True
    except Exception:
        return False


# ---- exercise 1: SignupIn --------------------------------------------------------------------

INVALID = [
    ("a password without digits", dict(password="onlylettershere", password_confirm="onlylettershere"), ["body", "password"]),
    ("a password of 8 characters", dict(password="abcd1234", password_confirm="abcd1234"), ["body", "password"]),
    ("a confirmation that differs", dict(password_confirm="Different123456"), ["body"]),
    ("an email without @", dict(email="robin.example.org"), ["body", "email"]),
    ("age 12", dict(age=12), ["body", "age"]),
    ("age 'old'", dict(age="old"), ["body", "age"]),
    ("a display name of spaces", dict(display_name="    "), ["body", "display_name"]),
    ("a display name of 41 characters", dict(display_name="x" * 41), ["body", "display_name"]),
    ("an extra field is_admin", dict(is_admin=True), ["body", "is_admin"]),
    ("a missing password_confirm", dict(password_confirm=None), ["body", "password_confirm"]),
]
HINTS = {
    "password": "Field(min_length=..., max_length=...) sets the length; a @field_validator checks what it contains.",
    "email": "A @field_validator can lower-case the address and raise ValueError when it does not look like one.",
    "age": "Field(ge=..., le=...) bounds a number; the type int already refuses words.",
    "display_name": "Strip whitespace before the length is checked: ConfigDict has an option for every string field.",
    "is_admin": "A field nobody declared should be refused, not ignored (think: is_admin=true). See ConfigDict(extra=...).",
    "password_confirm": "Every field without a default is required.",
    "body": "Comparing two fields needs the whole model: a @model_validator(mode=\"after\") sees both, already validated.",
}


@check("Lesson 03 · SignupIn accepts exactly the right signups", limit_s=20)
async def check_signup_model(report, signup_app, SignupIn):
    missing = [f for f in FIELDS if f not in getattr(SignupIn, "model_fields", {})]
    if missing:
        report.fail("SignupIn declares the five fields", observed=f"missing: {', '.join(missing)}",
                    expected=", ".join(FIELDS), hint="Declare each field with its type, e.g. `age: int`.")
        return
    _report_spellings(report, SignupIn, "SignupIn")
    app = signup_app(SignupIn, _UserOut)
    async with serve(app, raise_app_exceptions=False) as client:
        valid = [_valid(), _valid(email="  Sam.Lee@Example.COM ", display_name="  Sam  "), _valid(age=13)]
        for payload in valid:
            response = await client.post("/signup", json=payload)
            body = json_body(response) or {}
            expected_email = payload["email"].strip().lower()
            if response.status_code != 201:
                report.fail(f"a valid signup ({payload['email'].strip()}) is accepted", observed=show_response(response, client),
                            expected="201", hint=status_hint(response, "POST", "/signup", client) if response.status_code != 422
                            else "A rule of yours refuses a signup the task allows: read the error's loc and msg "
                            "(are surrounding spaces removed before the rules run?).")
                return
            if body.get("email") != expected_email or body.get("display_name") != payload["display_name"].strip():
                report.fail("a valid signup is stored normalised", observed=show_response(response),
                            expected=f"email {expected_email!r}, display_name {payload['display_name'].strip()!r}",
                            hint="Lower-case the email in its validator; strip whitespace from every string.")
                return
        report.add(f"{len(valid)} valid signups accepted, email lower-cased, names stripped", True)

        for what, changes, loc in INVALID:
            payload = {k: v for k, v in _valid(**changes).items() if v is not None}
            response = await client.post("/signup", json=payload)
            locs = _locs(response)
            name = f"{what} → 422 at {loc}"
            if response.status_code >= 500:
                report.fail(name, observed=show_response(response, client), expected="422",
                            hint="A validator that raises anything but ValueError (or AssertionError) is a 500, not a 422.")
            elif response.status_code != 422 or loc not in locs:
                report.fail(name, observed=f"{response.status_code}, errors at {locs or 'nowhere'}", expected=f"422 at {loc}",
                            hint=HINTS[loc[-1]])
            else:
                report.add(name, True)

        odd = [
            ("invalid JSON", dict(content=b'{"email": ', headers={"content-type": "application/json"})),
            ("a JSON list", dict(json=[1, 2, 3])),
            ("null", dict(json=None)),
            ("a 100,000-character password", dict(json=_valid(password="a1" * 50_000, password_confirm="a1" * 50_000))),
            ("numbers everywhere", dict(json={f: 7 for f in FIELDS})),
        ]
        generated = generated_payloads(60)
        sent, server_errors, wrong = 0, [], []
        cases = [(what, kwargs, False) for what, kwargs in odd]
        cases += [(f"generated {json.dumps(p)[:80]}", dict(json=p), _accepted_by_reference(p)) for p in generated]
        for what, kwargs, should_accept in cases:
            response = await client.post("/signup", **kwargs)
            sent += 1
            if response.status_code >= 500:
                server_errors.append((what, show_response(response, client)))
            elif response.status_code != (201 if should_accept else 422):
                wrong.append((what, response.status_code, 201 if should_accept else 422))
        report.add(
            f"no malformed payload causes a 500 ({sent} sent, {len(generated)} generated this run)", not server_errors,
            observed=f"{len(server_errors)} answered 5xx; first: {server_errors[0][0]} → {server_errors[0][1]}" if server_errors else "",
            expected="422 for each",
            hint="Let Pydantic refuse bad input: validators raise ValueError; never index or call methods on "
                 "values a field type has not checked yet.",
        )
        report.add(
            "generated payloads are refused or accepted as the rules say", not wrong,
            observed=f"{len(wrong)} differ; first: {wrong[0][0]} → {wrong[0][1]}, expected {wrong[0][2]}" if wrong else "",
            expected="the same verdict as the rules in the task",
            hint="Compare your rules with the task, field by field: types, lengths, bounds, extra fields.",
        )


# ---- exercise 2: UserOut ------------------------------------------------------------------------

@check("Lesson 03 · UserOut returns the user and never a secret", limit_s=10)
async def check_user_out(report, signup_app, UserOut):
    _report_spellings(report, UserOut, "UserOut")
    payload = _valid()
    app = signup_app(_SignupIn, UserOut)
    async with serve(app, raise_app_exceptions=False) as client:
        response = await client.post("/signup", json=payload)
        listing = await client.get("/users")
    if response.status_code != 201:
        report.fail("POST /signup answers 201 with a UserOut", observed=show_response(response, client), expected="201",
                    hint=status_hint(response, "POST", "/signup", client))
        return
    errors = [str(e.exception) for e in client.errors_for("/users")]
    report.add(
        "UserOut.model_validate(user) reads an ORM object", listing.status_code == 200,
        observed=show_response(listing, client), expected="GET /users → 200",
        hint=("model_validate reads a dict's keys; to read an object's attributes the model must allow it "
              "in its ConfigDict." if any("valid dictionary" in e for e in errors)
              else status_hint(listing, "GET", "/users", client)),
    )
    body = json_body(response) or {}
    report.add(
        "the body has exactly id, email and display_name", sorted(body) == ["display_name", "email", "id"]
        and isinstance(body.get("id"), int) and body.get("email") == payload["email"].lower(),
        observed=show_response(response), expected='{"id": <int>, "email": ..., "display_name": ...}',
        hint="A response model lists what the client may see: declare those three fields, nothing else.",
    )
    text = response.text + json.dumps(dict(response.headers))
    secrets = [name for name, secret in (("the password", payload["password"]),
                                         ("the password's hash", hash_password(payload["password"])))
               if secret in text]
    report.add(
        "no secret in the response", not secrets,
        observed=f"the response contains {' and '.join(secrets)}" if secrets else "",
        expected="neither the password nor its hash",
        hint="Whatever the route returns, only the response model's fields are sent: keep secrets out of it.",
    )
