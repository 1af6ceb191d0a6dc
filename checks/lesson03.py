"""Lesson 03, validators: Pydantic v2 models that accept exactly the right input and a
response model that never leaks a secret.

Each check builds the lesson's app around the learner's model and the course's own version
of the other model, so the two exercises are judged apart. Each check first uses the
learner's model directly (inside the check, on the event loop: a validator that blocks is
stopped there), then sends requests. Bad payloads come from a fixed table and from
hypothesis, new ones each run; the course's reference model is the oracle that says whether
a generated payload should be accepted. Response models are probed with the three shapes a
route returns in practice: an ORM object, a model made by hand, and dict rows that carry
every column.
"""

import hashlib
import json
import random
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, EmailStr, Field, SecretStr, ValidationError, field_validator, model_validator
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .harness import describe_exception, serve
from .observe import json_body, show_response, status_hint
from .runner import check


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


# A pattern many guides use for addresses; the lesson shows what it lets through.
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


# ---- the course's own models: the oracle for generated payloads, and the other half of each app --

class _SignupIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    email: EmailStr
    password: SecretStr = Field(min_length=12, max_length=128)
    password_confirm: SecretStr
    display_name: str = Field(min_length=1, max_length=40)
    age: int = Field(ge=13, le=130)

    @field_validator("email")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @field_validator("password")
    @classmethod
    def _strong(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if not (any(c.isalpha() for c in text) and any(c.isdigit() for c in text)):
            raise ValueError("use letters and digits")
        return value

    @model_validator(mode="after")
    def _confirmed(self):
        if self.password.get_secret_value() != self.password_confirm.get_secret_value():
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
               "display_name": "Robin", "age": random.randint(18, 90)}
    payload.update(changes)
    return payload


def _error_items(response):
    """The 422's `detail` if it has FastAPI's shape (a list of errors with loc, msg, type), else None."""
    body = json_body(response)
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, list) or not detail:
        return None
    for error in detail:
        if not (isinstance(error, dict) and isinstance(error.get("loc"), list) and isinstance(error.get("msg"), str)
                and isinstance(error.get("type"), str)):
            return None
    return detail


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
    import tempfile

    import hypothesis.configuration
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    # Hypothesis keeps a cache in ./.hypothesis by default: not in the learner's notebook folder.
    home = hypothesis.configuration.storage_directory(intent_to_write=False).home_directory
    if home.resolve() == (Path.cwd() / ".hypothesis").resolve():
        hypothesis.configuration.set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "fastapi-course-hypothesis")

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
    ("an email with two dots in a row", dict(email="robin..lee@example.org"), ["body", "email"]),
    ("an email whose domain starts with a hyphen", dict(email="robin@-example.org"), ["body", "email"]),
    ("age 12", dict(age=12), ["body", "age"]),
    ("age 'old'", dict(age="old"), ["body", "age"]),
    ("a display name of spaces", dict(display_name="    "), ["body", "display_name"]),
    ("a display name of 41 characters", dict(display_name="x" * 41), ["body", "display_name"]),
    ("an extra field is_admin", dict(is_admin=True), ["body", "is_admin"]),
    ("a missing password_confirm", dict(password_confirm=None), ["body", "password_confirm"]),
]
HINTS = {
    "password": "Field(min_length=..., max_length=...) sets the length; a @field_validator checks what it contains.",
    "email": "Type the field EmailStr (email-validator knows the rules) and lower-case it in a validator after it.",
    "age": "Field(ge=..., le=...) bounds a number; the type int already refuses words.",
    "display_name": "Strip whitespace before the length is checked: ConfigDict has an option for every string field.",
    "is_admin": "A field nobody declared should be refused, not ignored (think: is_admin=true). See ConfigDict(extra=...).",
    "password_confirm": "Every field without a default is required.",
    "body": "Comparing two fields needs the whole model: a @model_validator(mode=\"after\") sees both, already validated.",
}
STRING_DETAIL_HINT = ("The 422's detail is a sentence, not FastAPI's list of errors: a validator raised HTTPException. "
                      "Raise ValueError, so the error names the field (loc) and has FastAPI's shape.")


def _secret_places(instance, secret: str) -> list[str]:
    places = {"repr()": lambda: repr(instance), "str()": lambda: str(instance),
              "model_dump_json()": instance.model_dump_json, "str(model_dump())": lambda: str(instance.model_dump())}
    found = []
    for where, show in places.items():
        try:
            if secret in show():
                found.append(where)
        except Exception as exc:  # a model that cannot even be shown: say so
            found.append(f"{where} raised {type(exc).__name__}")
    return found


def _model_accepts_a_valid_signup(report, SignupIn, payload) -> object | None:
    """Validate a valid payload with the learner's model itself, inside the check. None if it failed."""
    try:
        return SignupIn.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        report.fail("SignupIn accepts a valid signup", observed=f"ValidationError at {list(first['loc'])}: {first['msg']}",
                    expected=f"accepted: {json.dumps({**payload, 'password': '…', 'password_confirm': '…'})}",
                    hint="A rule of yours refuses a signup the task allows: compare that field's rules with the task.")
    except Exception as exc:
        text = describe_exception(exc)
        report.fail("SignupIn accepts a valid signup", observed=text, expected="accepted, or a ValidationError",
                    hint=("A validator that runs after the field's type gets a SecretStr, not a str: read the text with "
                          "`.get_secret_value()`." if "SecretStr" in text else
                          "A validator raised something other than ValueError: Pydantic turns only ValueError (and "
                          "AssertionError) into a field error; anything else is a 500."))
    return None


def _before_validators(model) -> list[str]:
    decorators = getattr(model, "__pydantic_decorators__", None)
    found = []
    for group in ("model_validators", "field_validators"):
        for name, decorator in (getattr(decorators, group, None) or {}).items():
            if getattr(decorator.info, "mode", "") in ("before", "wrap", "plain"):
                found.append(name)
    return found


def _server_error_hint(SignupIn, client, response) -> str:
    """Why a payload caused a 500, from what the app raised and how the model is built."""
    errors = client.errors_for(response.request.url.path)
    text = describe_exception(errors[-1].exception) if errors else ""
    if "'ValueError' object" in text or "'AssertionError' object" in text:
        return ("A validator returned an exception instead of raising it: the field's value became that exception "
                "object. `raise ValueError(...)` refuses the value.")
    before = _before_validators(SignupIn)
    if before and any(kind in text for kind in ("KeyError", "TypeError", "AttributeError", "IndexError")):
        return (f"{', '.join(before)} runs before the fields are validated (mode='before'): it gets the raw input, where "
                "keys may be missing and values of any type. Use mode='after', which gets the validated model.")
    if "SecretStr" in text:
        return "A validator after a SecretStr field gets the SecretStr: read its text with `.get_secret_value()`."
    return ("A validator raised something other than ValueError (or AssertionError): Pydantic turns only those into a "
            "422; anything else is a 500.")


@check("Lesson 03 · SignupIn accepts exactly the right signups, and keeps the password secret", limit_s=20)
async def check_signup_model(report, signup_app, SignupIn):
    missing = [f for f in FIELDS if f not in getattr(SignupIn, "model_fields", {})]
    if missing:
        report.fail("SignupIn declares the five fields", observed=f"missing: {', '.join(missing)}",
                    expected=", ".join(FIELDS), hint="Declare each field with its type, e.g. `age: int`.")
        return
    _report_spellings(report, SignupIn, "SignupIn")

    payload = _valid()
    instance = _model_accepts_a_valid_signup(report, SignupIn, payload)
    if instance is None:
        return
    places = _secret_places(instance, payload["password"])
    confirm_only = not isinstance(getattr(instance, "password_confirm", None), SecretStr) and isinstance(
        getattr(instance, "password", None), SecretStr)
    if not report.add(
        "the password never shows in a repr, a log line or JSON", not places,
        observed=f"the password appears in {', '.join(places)} of a SignupIn" if places else "",
        expected="'**********' in its place",
        hint=("password_confirm holds the same secret: make it a SecretStr too." if confirm_only else
              "Type both password fields SecretStr: its repr and JSON show '**********', and `.get_secret_value()` "
              "gives the text back where you need it (hashing it)."),
    ):
        return

    app = signup_app(SignupIn, _UserOut)
    async with serve(app, raise_app_exceptions=False) as client:
        valid = [_valid(), _valid(email="  Sam.Lee@Example.COM ", display_name="  Sam  "), _valid(age=13)]
        for payload in valid:
            response = await client.post("/signup", json=payload)
            body = json_body(response) or {}
            expected_email = payload["email"].strip().lower()
            if response.status_code != 201:
                report.fail(f"a valid signup ({payload['email'].strip()}, age {payload['age']}) is accepted",
                            observed=show_response(response, client), expected="201",
                            hint=status_hint(response, "POST", "/signup", client) if response.status_code != 422
                            else "A rule of yours refuses a signup the task allows: read the error's loc and msg "
                            "(are surrounding spaces removed before the rules run?).")
                return
            if body.get("email") != expected_email or body.get("display_name") != payload["display_name"].strip():
                unstripped = body.get("display_name") != payload["display_name"].strip() or (
                    isinstance(body.get("email"), str) and body["email"] != body["email"].strip())
                report.fail("a valid signup is stored normalised", observed=show_response(response),
                            expected=f"email {expected_email!r}, display_name {payload['display_name'].strip()!r}",
                            hint=("Surrounding spaces are kept: strip whitespace from every string (ConfigDict has an "
                                  "option) before the rules run." if unstripped else
                                  "Lower-case the whole address in a validator after EmailStr (EmailStr lower-cases "
                                  "only the domain)."))
                return
        report.add(f"{len(valid)} valid signups accepted, email lower-cased, names stripped", True)

        for what, changes, loc in INVALID:
            payload = {k: v for k, v in _valid(**changes).items() if v is not None}
            response = await client.post("/signup", json=payload)
            errors = _error_items(response)
            locs = [error["loc"] for error in errors or []]
            name = f"{what} → 422 at {loc}"
            if response.status_code >= 500:
                report.fail(name, observed=show_response(response, client), expected="422",
                            hint=_server_error_hint(SignupIn, client, response))
            elif response.status_code == 422 and errors is None:
                report.fail(name, observed=show_response(response), expected=f"422, detail: [{{loc: {loc}, msg, type}}]",
                            hint=STRING_DETAIL_HINT)
            elif response.status_code != 422 or loc not in locs:
                pattern_passes = loc == ["body", "email"] and EMAIL_PATTERN.match(payload["email"])
                report.fail(name, observed=f"{response.status_code}, errors at {locs or 'nowhere'}", expected=f"422 at {loc}",
                            hint=("A hand-written pattern lets this address through; it is not valid. EmailStr "
                                  "(email-validator) knows the rules." if pattern_passes and response.status_code == 201
                                  else HINTS[loc[-1]]))
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
                server_errors.append((what, show_response(response, client), _server_error_hint(SignupIn, client, response)))
            elif response.status_code != (201 if should_accept else 422) or (
                    response.status_code == 422 and _error_items(response) is None):
                wrong.append((what, response.status_code, 201 if should_accept else 422))
        report.add(
            f"no malformed payload causes a 500 ({sent} sent, {len(generated)} generated this run)", not server_errors,
            observed=f"{len(server_errors)} answered 5xx; first: {server_errors[0][0]} → {server_errors[0][1]}" if server_errors else "",
            expected="422 for each",
            hint=server_errors[0][2] if server_errors else "",
        )
        report.add(
            "generated payloads are refused or accepted as the rules say", not wrong,
            observed=f"{len(wrong)} differ; first: {wrong[0][0]} → {wrong[0][1]}, expected {wrong[0][2]}" if wrong else "",
            expected="the same verdict as the rules in the task",
            hint="Compare your rules with the task, field by field: types, lengths, bounds, extra fields.",
        )


# ---- exercise 2: UserOut ------------------------------------------------------------------------

EXPECTED_KEYS = ["display_name", "email", "id"]


def _record(**changes) -> UserRecord:
    password = f"Secret{random.randint(100000, 999999)}pw"
    fields = dict(id=random.randint(1, 10**6), email=f"kim{random.randint(10, 99)}@example.org", display_name="Kim",
                  age=random.randint(18, 90), password_hash=hash_password(password))
    fields.update(changes)
    return UserRecord(**fields)


def _shape_problem(body, expected: dict, UserOut) -> tuple[str, str] | None:
    """(what is wrong, hint) for one user in a response, or None when it is exactly right."""
    if not isinstance(body, dict):
        return f"not an object: {json.dumps(body)[:80]}", "Each user is an object with id, email and display_name."
    extra = sorted(set(body) - set(EXPECTED_KEYS))
    missing = sorted(set(EXPECTED_KEYS) - set(body))
    if extra and missing and not any("password" in k or "hash" in k for k in extra):
        return (f"{extra} instead of {missing}",
                f"The JSON names {', '.join(extra)} where {', '.join(missing)} belongs: an alias renames the key. "
                "Keep the task's names.")
    if extra:
        allow = getattr(UserOut, "model_config", {}).get("extra") == "allow"
        secret = [k for k in extra if "password" in k or "hash" in k]
        return (f"extra keys {extra}", (
            "extra='allow' copies every key it is given into the response: the dict rows brought the hash "
            "along. A response model lists what may leave; leave extra at its default." if allow else
            f"Remove {', '.join(extra)} from UserOut" + (": never a secret, not even masked." if secret else
                                                         ": a response model lists exactly what the client may see.")))
    if missing:
        return (f"missing {missing}",
                f"Declare {', '.join(missing)} in UserOut (under those names: an alias renames the key in the JSON).")
    wrong = [k for k in EXPECTED_KEYS if type(body[k]) is not type(expected[k]) or body[k] != expected[k]]
    if wrong:
        k = wrong[0]
        return (f"{k} = {json.dumps(body[k])}, expected {json.dumps(expected[k])}",
                f"Declare {k} with the type the record holds ({type(expected[k]).__name__}): a response model also "
                "converts.")
    return None


@check("Lesson 03 · UserOut returns the user and never a secret, whatever the route returns", limit_s=10)
async def check_user_out(report, signup_app, UserOut):
    _report_spellings(report, UserOut, "UserOut")
    record = _record()
    try:
        converted = UserOut.model_validate(record)
    except ValidationError as exc:
        attributes = any(e.get("type") == "model_attributes_type" or "valid dictionary" in e.get("msg", "")
                         for e in exc.errors())
        report.fail("UserOut.model_validate(user) reads an ORM object", observed=f"ValidationError: {exc.errors()[0]['msg']}",
                    expected="a UserOut",
                    hint=("model_validate reads a dict's keys; to read an object's attributes the model must allow it "
                          "in its ConfigDict." if attributes else
                          "UserOut declares something the stored user does not have: keep to id, email, display_name."))
        return
    except Exception as exc:
        report.fail("UserOut.model_validate(user) reads an ORM object", observed=describe_exception(exc),
                    expected="a UserOut", hint="A validator of UserOut raised: it gets the stored user's values.")
        return
    report.add("UserOut.model_validate(user) reads an ORM object", isinstance(converted, UserOut),
               observed="" if isinstance(converted, UserOut) else f"got {type(converted).__name__}", expected="a UserOut",
               hint="model_validate returns an instance of the model: do not override it.")

    payload = _valid()
    app = signup_app(_SignupIn, UserOut)
    async with serve(app, raise_app_exceptions=False) as client:
        created = await client.post("/signup", json=payload)
        if created.status_code != 201:
            report.fail("POST /signup answers 201 with a UserOut", observed=show_response(created, client), expected="201",
                        hint=status_hint(created, "POST", "/signup", client))
            return
        user_id = 1  # a new app numbers its users from 1
        one = await client.get(f"/users/{user_id}")
        listing = await client.get("/users")
    expected = {"id": user_id, "email": payload["email"].lower(), "display_name": payload["display_name"]}

    shapes = [
        ("POST /signup (the ORM object)", created, lambda b: b),
        (f"GET /users/{user_id} (model_validate by hand)", one, lambda b: b),
        ("GET /users (dict rows, every column)", listing, lambda b: b[0] if isinstance(b, list) and b else b),
    ]
    groups: dict = {}  # one item per distinct problem, naming every shape that shows it
    for what, response, first in shapes:
        if response.status_code not in (200, 201):
            report.fail(f"{what} answers with the user", observed=show_response(response, client), expected="200",
                        hint=status_hint(response, response.request.method, response.request.url.path, client))
            continue
        problem = _shape_problem(first(json_body(response)), expected, UserOut)
        groups.setdefault(problem, []).append((what, response))
    for problem, found in groups.items():
        labels = ("all three shapes (the ORM object, by hand, dict rows)" if len(found) == len(shapes) > 1
                  else " and ".join(what for what, _ in found))
        report.add(f"{labels} → exactly id, email, display_name", problem is None,
                   observed=f"{problem[0]}: {show_response(found[0][1])}" if problem else "",
                   expected='{"id": 1, "email": "<lower-cased>", "display_name": ...}',
                   hint=problem[1] if problem else "")

    password = payload["password"]
    leaks = []
    for what, response, _ in shapes:
        text = response.text + json.dumps(dict(response.headers))
        found = [name for name, secret in (("the password", password), ("the password's hash", hash_password(password)))
                 if secret in text]
        if found:
            leaks.append(f"{what.split(' (')[0]}: {' and '.join(found)}")
    report.add(
        "no password or hash in any response", not leaks,
        observed="; ".join(leaks), expected="neither the password nor its hash, in every shape",
        hint="Whatever the route returns, only the response model's fields are sent: keep secrets out of it, and "
             "do not let it keep extra keys.",
    )
