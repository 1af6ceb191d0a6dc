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
import string
from pathlib import Path

from typing import Annotated

from pydantic import (BaseModel, ConfigDict, EmailStr, Field, SecretStr, StringConstraints, ValidationError,
                      field_validator, model_validator)
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
    model_config = ConfigDict(extra="forbid")  # no model-wide strip: it would strip the passwords too

    email: EmailStr  # EmailStr removes surrounding spaces itself
    password: SecretStr = Field(min_length=12, max_length=128)
    password_confirm: SecretStr
    display_name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)]
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


class _SignupInStrict(_SignupIn):
    """Another reading of the same wording: a whole number only as a JSON integer, Python's own strip()."""

    age: int = Field(ge=13, le=130, strict=True)
    display_name: str

    @field_validator("display_name", mode="before")
    @classmethod
    def _strip(cls, value):
        return value.strip() if isinstance(value, str) else value

    @field_validator("display_name")
    @classmethod
    def _length(cls, value: str) -> str:
        if not 1 <= len(value) <= 40:
            raise ValueError("1 to 40 characters")
        return value


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


def _verdict_of_the_rules(payload) -> bool | None:
    """True (accept) or False (refuse) when every reading of the wording agrees, else None (not judged):
    a string "42" or 42.0 for the age, a name edged with control characters, are left to the learner."""
    verdicts = set()
    for reference in (_SignupIn, _SignupInStrict):
        try:
            reference.model_validate(payload)
            verdicts.add(True)
        except Exception:
            verdicts.add(False)
    return verdicts.pop() if len(verdicts) == 1 else None


# ---- exercise 1: SignupIn --------------------------------------------------------------------

def _password(text: str) -> dict:
    return {"password": text, "password_confirm": text}


def _digits(count: int) -> str:
    return "".join(random.choices(string.digits, k=count))


def valid_signups() -> list[tuple[str, dict]]:
    """Signups the task allows, at the edges of its wording (new values each run)."""
    return [
        ("a plain signup", _valid()),
        ("spaces around the email and the name, capitals in the address",
         _valid(email="  Sam.Lee@Example.COM ", display_name="  Sam  ")),
        ("a password with spaces around it", _valid(**_password(f"  tulip pass {_digits(4)}  "))),
        ("a password of 12 capitals and digits", _valid(**_password("TULIPS" + _digits(6)))),
        ("a password of 128 characters", _valid(**_password(("ab" + _digits(1)) * 42 + "xy"))),
        ("age 13 and a one-letter name", _valid(age=13, display_name="Q")),
        ("age 130 and a name of 40 characters", _valid(age=130, display_name="Rob" + "i" * 36 + "n")),
    ]


def _expected_values(payload: dict) -> dict:
    return {"email": payload["email"].strip().lower(), "password": payload["password"],
            "password_confirm": payload["password_confirm"], "display_name": payload["display_name"].strip(),
            "age": payload["age"]}


STRIPS_EVERY_STRING = ("ConfigDict(str_strip_whitespace=True) strips every string of the model — the password too, "
                       "so '  secret pass 12  ' is stored as 'secret pass 12'. Strip only the field that needs it "
                       "(the display name); EmailStr already trims the address.")


def _instance_problem(SignupIn, instance, payload: dict) -> tuple[str, str] | None:
    """(what is wrong, hint) with the model the learner's SignupIn returned for a valid payload, or None."""
    if not isinstance(instance, SignupIn):
        return (f"SignupIn.model_validate(...) returned {instance!r}"[:160],
                "A @model_validator must give the model back (`return self` in mode='after'): without it, validating "
                "a signup returns None, and FastAPI hands your route None.")
    expected = _expected_values(payload)
    for field, want in expected.items():
        value = getattr(instance, field, None)
        if value is None:
            return (f"{field} is None",
                    f"A @field_validator for {field} does not `return` the value: what a validator returns is what "
                    "the field keeps.")
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if field.startswith("password"):
            if not isinstance(value, SecretStr):
                continue  # the secrecy item names it
            if text != want:
                stripped = text == want.strip()
                return (f"{field} holds {len(text)} characters, {len(want)} were sent",
                        STRIPS_EVERY_STRING if stripped else "Keep the password exactly as typed: a validator "
                        "returns the value it was given.")
            continue
        if type(text) is not type(want) or text != want:
            shown = f"{field} = {text!r}, expected {want!r}"
            if field == "email":
                return shown, ("Lower-case the whole address in a validator after EmailStr (EmailStr lower-cases only "
                               "the domain)." if text.lower() == want else "Keep the address EmailStr gives you, "
                               "lower-cased.")
            if field == "display_name":
                return shown, ("Surrounding spaces are kept: strip the display name before its length is checked — "
                               "that field only, not every string (the password keeps its spaces).")
            return shown, f"Type {field} as the task says: a whole number is an int."
    return None


def _refusal_hint(what: str, error: dict, SignupIn) -> str:
    loc = list(error["loc"])
    strips = bool(getattr(SignupIn, "model_config", {}).get("str_strip_whitespace"))
    if loc[-1:] == ["password"] and "capitals" in what and error["type"] in ("value_error", "assertion_error"):
        return ("A letter is any letter, capital or not: this password has letters and digits. Test for a letter "
                "with str.isalpha(), not for lower case only.")
    if loc[-1:] == ["password"] and "spaces" in what and strips:
        return STRIPS_EVERY_STRING
    return (f"A rule of yours refuses a signup the task allows ({what}): compare that field's rules with the task "
            "(its bounds include both ends).")


def _model_accepts_valid_signups(report, SignupIn) -> list[tuple[str, dict]] | None:
    """Validate each valid payload with the learner's model itself and look at what it returned.
    The payloads when every one is right, else None (the failure is in the report)."""
    signups = valid_signups()
    for what, payload in signups:
        name = f"SignupIn accepts a valid signup ({what}) and keeps what it says"
        shown = json.dumps({**payload, "password": "…", "password_confirm": "…"})
        try:
            instance = SignupIn.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            report.fail(name, observed=f"ValidationError at {list(first['loc'])}: {first['msg']}",
                        expected=f"accepted: {shown}", hint=_refusal_hint(what, first, SignupIn))
            return None
        except Exception as exc:
            text = describe_exception(exc)
            report.fail(name, observed=text, expected="accepted, or a ValidationError",
                        hint=("A value is None where the signup had one: a @field_validator that does not `return` "
                              "the value leaves None in its field." if "NoneType" in text else
                              "A validator that runs after the field's type gets a SecretStr, not a str: read the text "
                              "with `.get_secret_value()`." if "SecretStr" in text else
                              "A validator raised something other than ValueError: Pydantic turns ValueError and "
                              "AssertionError into a 422; most other exceptions become a 500."))
            return None
        problem = _instance_problem(SignupIn, instance, payload)
        if problem is not None:
            report.fail(name, observed=problem[0], expected=f"the values of {shown}, normalised as the task says",
                        hint=problem[1])
            return None
    report.add(f"SignupIn accepts {len(signups)} valid signups at the task's edges and keeps what they say "
               "(password as typed, email lower-cased, name stripped)", True)
    return signups


INVALID = [
    # what, changes, the loc the 422 must name, the hint when it does not
    ("a password without digits", _password("onlylettershere"), ["body", "password"],
     "A @field_validator checks what the password contains: a letter and a digit."),
    ("a password with no letter (digits and signs)", _password("1234-5678-9012"), ["body", "password"],
     "A @field_validator checks what the password contains: at least one letter, not merely 'not only digits'."),
    ("a password of 11 characters", _password("Tulips12345"), ["body", "password"],
     "Field(min_length=..., max_length=...) sets the length: 12 to 128 characters."),
    ("a password of 129 characters", _password("ab1" * 43), ["body", "password"],
     "Field(min_length=..., max_length=...) sets the length: 12 to 128 characters."),
    ("a confirmation that differs", dict(password_confirm="Different123456"), ["body"],
     "Comparing two fields needs the whole model: a @model_validator(mode=\"after\") sees both, already validated."),
    ("an email without @", dict(email="robin.example.org"), ["body", "email"],
     "Type the field EmailStr (email-validator knows the rules) and lower-case it in a validator after it."),
    ("an email with two dots in a row", dict(email="robin..lee@example.org"), ["body", "email"],
     "Type the field EmailStr (email-validator knows the rules) and lower-case it in a validator after it."),
    ("an email whose domain starts with a hyphen", dict(email="robin@-example.org"), ["body", "email"],
     "Type the field EmailStr (email-validator knows the rules) and lower-case it in a validator after it."),
    ("age 12", dict(age=12), ["body", "age"], "Field(ge=..., le=...) bounds a number: 13 to 130."),
    ("age 131", dict(age=131), ["body", "age"], "Field(ge=..., le=...) bounds a number: 13 to 130."),
    ("age 30.5", dict(age=30.5), ["body", "age"],
     "A whole number is an int: a float field accepts 30.5. The type int refuses fractions (and words)."),
    ("age 'old'", dict(age="old"), ["body", "age"], "The type int refuses words."),
    ("a display name of spaces", dict(display_name="    "), ["body", "display_name"],
     "Strip the display name before its length is checked, so a name of spaces is empty."),
    ("a display name of 41 characters", dict(display_name="x" * 41), ["body", "display_name"],
     "Field(min_length=..., max_length=...) sets the name's length: 1 to 40 characters."),
    ("an extra field is_admin", dict(is_admin=True), ["body", "is_admin"],
     "A field nobody declared should be refused, not ignored (think: is_admin=true). See ConfigDict(extra=...)."),
    ("a missing password_confirm", dict(password_confirm=None), ["body", "password_confirm"],
     "Every field without a default is required."),
]
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
            "422; a TypeError, a KeyError and the like are a 500.")


@check("Lesson 03 · SignupIn accepts exactly the right signups, and keeps the password secret", limit_s=20)
async def check_signup_model(report, signup_app, SignupIn):
    missing = [f for f in FIELDS if f not in getattr(SignupIn, "model_fields", {})]
    if missing:
        report.fail("SignupIn declares the five fields", observed=f"missing: {', '.join(missing)}",
                    expected=", ".join(FIELDS), hint="Declare each field with its type, e.g. `age: int`.")
        return
    _report_spellings(report, SignupIn, "SignupIn")

    signups = _model_accepts_valid_signups(report, SignupIn)
    if signups is None:
        return
    payload = signups[0][1]
    instance = SignupIn.model_validate(payload)
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
        for what, payload in signups:
            response = await client.post("/signup", json=payload)
            body = json_body(response) or {}
            expected = _expected_values(payload)
            if response.status_code != 201 or body.get("email") != expected["email"] or (
                    body.get("display_name") != expected["display_name"]):
                report.fail(f"POST /signup with a valid signup ({what}) → 201, normalised",
                            observed=show_response(response, client),
                            expected=f"201, email {expected['email']!r}, display_name {expected['display_name']!r}",
                            hint=status_hint(response, "POST", "/signup", client) if response.status_code != 201
                            else "The model accepted this signup on its own but not inside FastAPI: compare the two.")
                return
        report.add(f"POST /signup accepts the {len(signups)} valid signups (201)", True)

        for what, changes, loc, hint in INVALID:
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
                                  else hint))
            else:
                report.add(name, True)

        odd = [
            ("invalid JSON", dict(content=b'{"email": ', headers={"content-type": "application/json"})),
            ("a JSON list", dict(json=[1, 2, 3])),
            ("null", dict(json=None)),
            ("a 100,000-character password", dict(json=_valid(**_password("a1" * 50_000)))),
            ("numbers everywhere", dict(json={f: 7 for f in FIELDS})),
        ]
        generated = generated_payloads(60)
        sent, server_errors, wrong = 0, [], []
        cases = [(what, kwargs, False) for what, kwargs in odd]
        cases += [(f"generated {json.dumps(p)[:80]}", dict(json=p), _verdict_of_the_rules(p)) for p in generated]
        for what, kwargs, should_accept in cases:
            response = await client.post("/signup", **kwargs)
            sent += 1
            if response.status_code >= 500:
                server_errors.append((what, show_response(response, client), _server_error_hint(SignupIn, client, response)))
            elif should_accept is not None and (response.status_code != (201 if should_accept else 422) or (
                    response.status_code == 422 and _error_items(response) is None)):
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


def imported_user() -> UserRecord:
    """A user from before signup checked anything: today's SignupIn would refuse both the address and the name."""
    return _record(id=1, email=f"old..import{random.randint(10, 99)}@example.org",
                   display_name="Imported from the old system, name unchecked" + "!" * random.randint(1, 5))


STORED_IS_NOT_INPUT = ("UserOut re-checks what leaves with the input's rules, so one stored user that predates them "
                       "turns the response into a 500. A response model says what may leave and in which type; the "
                       "rules for what may come in belong to SignupIn.")


def _none_hint(body, expected: dict) -> str | None:
    if isinstance(body, dict) and any(body.get(k) is None and expected[k] is not None for k in EXPECTED_KEYS if k in body):
        return "A @field_validator of UserOut does not `return` the value: the field keeps what it returns (None)."
    return None


@check("Lesson 03 · UserOut returns the user and never a secret, whatever the route returns", limit_s=10)
async def check_user_out(report, signup_app, UserOut):
    _report_spellings(report, UserOut, "UserOut")
    old = imported_user()
    for what, record in (("a new user", _record()), ("an imported user (an address and a name today's rules refuse)", old)):
        name = f"UserOut.model_validate(user) reads an ORM object: {what}"
        try:
            converted = UserOut.model_validate(record)
        except ValidationError as exc:
            first = exc.errors()[0]
            attributes = any(e.get("type") == "model_attributes_type" or "valid dictionary" in e.get("msg", "")
                             for e in exc.errors())
            report.fail(name, observed=f"ValidationError at {list(first['loc'])}: {first['msg']}", expected="a UserOut",
                        hint=("model_validate reads a dict's keys; to read an object's attributes the model must "
                              "allow it in its ConfigDict." if attributes else STORED_IS_NOT_INPUT if record is old else
                              "UserOut declares something the stored user does not have: keep to id, email, "
                              "display_name."))
            return
        except Exception as exc:
            report.fail(name, observed=describe_exception(exc), expected="a UserOut",
                        hint="A validator of UserOut raised: it gets the stored user's values.")
            return
        if not report.add(name, isinstance(converted, UserOut),
                          observed="" if isinstance(converted, UserOut) else f"got {converted!r}"[:120],
                          expected="a UserOut",
                          hint="model_validate returns an instance of the model: a @model_validator must `return self`."):
            return

    payload = _valid()
    app = signup_app(_SignupIn, UserOut, imported=[old])
    async with serve(app, raise_app_exceptions=False) as client:
        created = await client.post("/signup", json=payload)
        if created.status_code != 201:
            report.fail("POST /signup answers 201 with a UserOut", observed=show_response(created, client), expected="201",
                        hint=status_hint(created, "POST", "/signup", client))
            return
        user_id = 2  # after the one imported user
        one = await client.get(f"/users/{user_id}")
        listing = await client.get("/users")
        old_one = await client.get(f"/users/{old.id}")
    expected = {"id": user_id, "email": payload["email"].lower(), "display_name": payload["display_name"]}
    expected_old = {"id": old.id, "email": old.email, "display_name": old.display_name}

    shapes = [
        ("POST /signup (the ORM object)", created, lambda b: b),
        (f"GET /users/{user_id} (model_validate by hand)", one, lambda b: b),
        ("GET /users (dict rows, every column)", listing, lambda b: b[-1] if isinstance(b, list) and b else b),
    ]
    groups: dict = {}  # one item per distinct problem, naming every shape that shows it
    for what, response, pick in shapes:
        if response.status_code not in (200, 201):
            errors = client.errors_for(response.request.url.path)
            about_old = response.status_code >= 500 and errors and "Validation" in type(errors[-1].exception).__name__
            report.fail(f"{what} answers with the user", observed=show_response(response, client), expected="200",
                        hint=STORED_IS_NOT_INPUT if about_old else
                        status_hint(response, response.request.method, response.request.url.path, client))
            continue
        body = pick(json_body(response))
        problem = _shape_problem(body, expected, UserOut)
        if problem is not None and _none_hint(body, expected):
            problem = (problem[0], _none_hint(body, expected))
        groups.setdefault(problem, []).append((what, response))
    for problem, found in groups.items():
        labels = ("all three shapes (the ORM object, by hand, dict rows)" if len(found) == len(shapes) > 1
                  else " and ".join(what for what, _ in found))
        report.add(f"{labels} → exactly id, email, display_name", problem is None,
                   observed=f"{problem[0]}: {show_response(found[0][1])}" if problem else "",
                   expected='{"id": 2, "email": "<lower-cased>", "display_name": ...}',
                   hint=problem[1] if problem else "")

    rows = json_body(listing) if listing.status_code == 200 else None
    shown_old = [json_body(old_one) if old_one.status_code == 200 else None,
                 rows[0] if isinstance(rows, list) and len(rows) == 2 else None]
    if one.status_code == 200:  # the route works for a new user: what differs for the old one is its data
        report.add(
            "the imported user is shown as stored (GET /users/1 and GET /users)",
            all(body == expected_old for body in shown_old),
            observed=f"GET /users/1 → {show_response(old_one, client)}; GET /users → {show_response(listing, client)}",
            expected=f"{json.dumps(expected_old)} in both",
            hint=STORED_IS_NOT_INPUT,
        )

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
