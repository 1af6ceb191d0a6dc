"""Lesson 03's checks: right models pass; the usual validator and response-model mistakes fail
at their own item, with the hint about their own cause."""

import json
import re
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import HTTPException
from pydantic import (AfterValidator, BaseModel, ConfigDict, EmailStr, Field, SecretStr, StringConstraints,
                      field_validator, model_validator)

STRIPPED_NAME = StringConstraints(strip_whitespace=True, min_length=1, max_length=40)

from checks.lesson03 import EMAIL_PATTERN, _SignupIn, _UserOut, check_signup_model, check_user_out
from conftest import assert_feedback_rules, failure_text, names, notebook_namespace

pytestmark = pytest.mark.anyio
lesson = notebook_namespace("03_validators")
signup_app = lesson["signup_app"]


def assert_fails_at(report, item: str, hint: str):
    """`item` (the start of a failed item's name) failed, with `hint` in that item's hint."""
    failed = [i for i in report.failures if i.name.startswith(item)]
    assert failed, report.text()
    assert hint in failed[0].hint, report.text()
    assert_feedback_rules(report)


# ---- SignupIn ---------------------------------------------------------------------------------

def lower(cls, value):
    return value.lower()


def strong(cls, value):
    text = value.get_secret_value()
    if not (any(c.isalpha() for c in text) and any(c.isdigit() for c in text)):
        raise ValueError("use letters and digits")
    return value


def confirmed(self):
    if self.password.get_secret_value() != self.password_confirm.get_secret_value():
        raise ValueError("passwords do not match")
    return self


def model(**overrides):
    """A SignupIn built like the notebook's, with some parts swapped for a mistake."""
    annotations = {"email": EmailStr, "password": SecretStr, "password_confirm": SecretStr,
                   "display_name": Annotated[str, STRIPPED_NAME], "age": int}
    annotations.update(overrides.pop("__annotations__", {}))
    namespace = {
        "model_config": ConfigDict(extra="forbid"),
        "__annotations__": annotations,
        "password": Field(min_length=12, max_length=128),
        "age": Field(ge=13, le=130),
        "lower": field_validator("email")(lower),
        "strong": field_validator("password")(strong),
        "confirmed": model_validator(mode="after")(confirmed),
    }
    namespace.update(overrides)
    return type("SignupIn", (BaseModel,), {k: v for k, v in namespace.items() if v is not None})


def letters_and_digits(value: SecretStr) -> SecretStr:
    text = value.get_secret_value()
    if not (any(c.isalpha() for c in text) and any(c.isdigit() for c in text)):
        raise ValueError("letters and digits, please")
    return value


class AnnotatedSignup(BaseModel):
    """A second right answer: constraints and validators as Annotated types, stripping per field."""

    model_config = ConfigDict(extra="forbid")

    email: Annotated[EmailStr, AfterValidator(str.lower)]
    password: Annotated[SecretStr, Field(min_length=12, max_length=128), AfterValidator(letters_and_digits)]
    password_confirm: SecretStr
    display_name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)]
    age: Annotated[int, Field(ge=13, le=130)]

    @model_validator(mode="after")
    def same(self):
        if self.password.get_secret_value() != self.password_confirm.get_secret_value():
            raise ValueError("passwords differ")
        return self


class DefaultsSignup(BaseModel):
    """A third right answer: `= Field(...)` defaults, the name stripped by a before-validator."""

    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    password: SecretStr = Field(min_length=12, max_length=128)
    password_confirm: SecretStr
    display_name: str = Field(min_length=1, max_length=40)
    age: int = Field(ge=13, le=130)

    @field_validator("email", mode="after")
    @classmethod
    def lower(cls, value: str) -> str:
        return value.lower()

    @field_validator("display_name", mode="before")
    @classmethod
    def strip(cls, value):
        return value.strip() if isinstance(value, str) else value

    @field_validator("password")
    @classmethod
    def strong(cls, value: SecretStr) -> SecretStr:
        if not re.search(r"[^\W\d_]", value.get_secret_value()) or not re.search(r"\d", value.get_secret_value()):
            raise ValueError("a letter and a digit")
        return value

    @model_validator(mode="after")
    def same(self):
        if self.password != self.password_confirm:  # SecretStr compares its secret values
            raise ValueError("passwords differ")
        return self


@pytest.mark.parametrize("signup_in", [lesson["SignupIn"], AnnotatedSignup, DefaultsSignup, model()],
                         ids=["notebook", "annotated", "defaults", "rebuilt"])
async def test_signup_right_answers_pass(signup_in):
    report = await check_signup_model.report(signup_app, signup_in)
    assert report.passed, report.text()


def returns_instead_of_raising(cls, value):
    if not any(c.isdigit() for c in value.get_secret_value()):
        return ValueError("use digits")  # returned, not raised: the value becomes this object
    return value


def before_mode_compare(cls, data):
    if data["password"] != data["password_confirm"]:  # raw input: may be anything, keys may be missing
        raise ValueError("passwords do not match")
    return data


def type_error_rule(cls, value):
    if not any(c.isdigit() for c in value.get_secret_value()):
        raise TypeError("use digits")  # not a ValueError: Pydantic does not turn it into a 422
    return value


def pattern_email(cls, value):
    value = value.strip().lower()
    if not EMAIL_PATTERN.match(value):
        raise ValueError("not an email address")
    return value


def http_exception_rule(cls, value):
    if not any(c.isdigit() for c in value.get_secret_value()):
        raise HTTPException(422, "Use letters and digits")  # a sentence, not FastAPI's list of errors
    return value


def iterates_secret(cls, value):
    if not (any(c.isalpha() for c in value) and any(c.isdigit() for c in value)):  # a SecretStr is not iterable
        raise ValueError("use letters and digits")
    return value


def plain_strong(cls, value):
    if not (any(c.isalpha() for c in value) and any(c.isdigit() for c in value)):
        raise ValueError("use letters and digits")
    return value


def plain_confirmed(self):
    if self.password != self.password_confirm:
        raise ValueError("passwords do not match")
    return self


def mixed_confirmed(self):
    if self.password.get_secret_value() != self.password_confirm:
        raise ValueError("passwords do not match")
    return self


def lower_case_only(cls, value):
    text = value.get_secret_value()
    if not (any(c.islower() for c in text) and any(c.isdigit() for c in text)):  # capitals are letters too
        raise ValueError("use letters and digits")
    return value


def not_only_digits(cls, value):
    text = value.get_secret_value()
    if text.isdigit() or not any(c.isdigit() for c in text):  # "1234-5678-9012" has no letter
        raise ValueError("use letters and digits")
    return value


def lower_no_return(cls, value):
    value.lower()  # computed, never returned: the field becomes None


def strong_no_return(cls, value):
    text = value.get_secret_value()
    if not (any(c.isalpha() for c in text) and any(c.isdigit() for c in text)):
        raise ValueError("use letters and digits")


def confirmed_no_return(self):
    if self.password.get_secret_value() != self.password_confirm.get_secret_value():
        raise ValueError("passwords do not match")


def confirmed_wrap_no_return(cls, data, handler):
    model = handler(data)
    if model.password.get_secret_value() != model.password_confirm.get_secret_value():
        raise ValueError("passwords do not match")


VALID = "SignupIn accepts a valid signup"
SIGNUP_WRONG = {
    "validator returns instead of raising": (dict(strong=field_validator("password")(returns_instead_of_raising)),
                                             "a password without digits", "instead of raising"),
    "mode='before' for the confirmation": (dict(confirmed=model_validator(mode="before")(classmethod(before_mode_compare))),
                                           "a missing password_confirm", "mode='before'"),
    "extra fields ignored": (dict(model_config=ConfigDict()), "an extra field is_admin", "extra="),
    "whitespace not stripped": (dict(__annotations__={"display_name": str}, display_name=Field(min_length=1, max_length=40)),
                                VALID + " (spaces around", "strip the display name"),
    "every string stripped, the password too": (dict(model_config=ConfigDict(extra="forbid", str_strip_whitespace=True)),
                                                VALID + " (a password with spaces", "the password too"),
    "TypeError in a validator": (dict(strong=field_validator("password")(type_error_rule)), "a password without digits",
                                 "other than ValueError"),
    "no age bounds": (dict(age=Field(ge=0)), "age 12", "Field(ge=..., le=...)"),
    "an upper bound of 120": (dict(age=Field(ge=13, le=120)), VALID + " (age 130", "bounds include both ends"),
    "age typed float": (dict(__annotations__={"age": float}), VALID, "a whole number is an int"),
    "a minimum of 13 characters": (dict(password=Field(min_length=13, max_length=128)),
                                   VALID + " (a password of 12", "bounds include both ends"),
    "a maximum of 1000 characters": (dict(password=Field(min_length=12, max_length=1000)),
                                     "a password of 129 characters", "12 to 128"),
    "a name of at most 30": (dict(__annotations__={"display_name": Annotated[str, StringConstraints(
        strip_whitespace=True, min_length=1, max_length=30)]}), VALID + " (age 130 and a name of 40", "both ends"),
    "a letter means lower case": (dict(strong=field_validator("password")(lower_case_only)),
                                  VALID + " (a password of 12 capitals", "capital or not"),
    "a letter means 'not only digits'": (dict(strong=field_validator("password")(not_only_digits)),
                                         "a password with no letter", "at least one letter"),
    "email validator without return": (dict(lower=field_validator("email")(lower_no_return)), VALID, "`return`"),
    "password validator without return": (dict(strong=field_validator("password")(strong_no_return)), VALID, "`return`"),
    "model validator without return self": (dict(confirmed=model_validator(mode="after")(confirmed_no_return)), VALID,
                                            "`return self`"),
    "wrap model validator without return": (dict(confirmed=model_validator(mode="wrap")(
        classmethod(confirmed_wrap_no_return))), VALID, "`return self`"),
    "a pattern instead of EmailStr": (dict(__annotations__={"email": str}, lower=field_validator("email")(pattern_email)),
                                      "an email with two dots in a row", "hand-written pattern"),
    "password typed str": (dict(__annotations__={"password": str, "password_confirm": str},
                                strong=field_validator("password")(plain_strong),
                                confirmed=model_validator(mode="after")(plain_confirmed)),
                           "the password never shows", "SecretStr"),
    "only password is a SecretStr": (dict(__annotations__={"password_confirm": str},
                                          confirmed=model_validator(mode="after")(mixed_confirmed)),
                                     "the password never shows", "password_confirm holds the same secret"),
    "HTTPException in a validator": (dict(strong=field_validator("password")(http_exception_rule)),
                                     "a password without digits", "raised HTTPException"),
    "a SecretStr used as a str": (dict(strong=field_validator("password")(iterates_secret)), VALID, "get_secret_value"),
    "EmailStr alone (domain lower-cased only)": (dict(lower=None), VALID, "Lower-case the whole address"),
    "no maximum length": (dict(password=Field(min_length=12)), "a password of 129 characters", "12 to 128"),
}


@pytest.mark.parametrize("mistake", SIGNUP_WRONG, ids=list(SIGNUP_WRONG))
async def test_signup_mistakes_fail_where_they_should(mistake):
    overrides, failed_item, hint = SIGNUP_WRONG[mistake]
    report = await check_signup_model.report(signup_app, model(**overrides))
    assert_fails_at(report, failed_item, hint)


async def test_a_model_wide_strip_is_told_what_it_did_to_the_password():
    report = await check_signup_model.report(signup_app, model(model_config=ConfigDict(extra="forbid",
                                                                                       str_strip_whitespace=True)))
    assert "password holds" in failure_text(report) and "str_strip_whitespace" in report.failures[0].hint, report.text()


async def test_a_lost_return_self_is_never_read_as_already_reported():
    """A model validator without `return self` makes model_validate return None: the check must say so."""
    report = await check_signup_model.report(signup_app, model(confirmed=model_validator(mode="after")(confirmed_no_return)))
    assert not report.passed and "returned None" in failure_text(report), report.text()


def test_the_oracle_leaves_what_the_wording_does_not_decide_unjudged():
    from checks.lesson03 import _valid, _verdict_of_the_rules

    assert _verdict_of_the_rules(_valid(age="42")) is None and _verdict_of_the_rules(_valid(age=42.0)) is None
    assert _verdict_of_the_rules(_valid(display_name="\x1f")) is None
    assert _verdict_of_the_rules(_valid(age=30.5)) is False and _verdict_of_the_rules(_valid()) is True


@pytest.mark.parametrize("run", range(3))
async def test_a_near_miss_fails_every_run(run):
    """No luck: an upper age bound of 120 fails each run, at the same item, whatever the random values."""
    report = await check_signup_model.report(signup_app, model(age=Field(ge=13, le=120)))
    assert [i.name for i in report.failures] == [
        f"{VALID} (age 130 and a name of 40 characters) and keeps what it says"], report.text()


async def test_v1_spellings_are_named():
    import warnings

    from pydantic import validator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

        class OldStyle(_SignupIn):
            class Config:
                extra = "forbid"

            @validator("display_name")
            def keep(cls, value):
                return value

    report = await check_signup_model.report(signup_app, OldStyle)
    assert names(report) == ["SignupIn uses Pydantic v2 spellings"]
    assert "class Config, @validator" in failure_text(report)


async def test_an_empty_model_is_told_which_fields_are_missing():
    class SignupIn(BaseModel):
        pass

    report = await check_signup_model.report(signup_app, SignupIn)
    assert "missing: email, password, password_confirm, display_name, age" in failure_text(report)


# ---- UserOut ------------------------------------------------------------------------------------

class UserOutWithHash(_UserOut):
    password_hash: str


class UserOutNoAttributes(BaseModel):
    id: int
    email: str
    display_name: str


class UserOutAllowsExtra(_UserOut):
    model_config = ConfigDict(from_attributes=True, extra="allow")


class UserOutIdAsText(BaseModel):
    model_config = ConfigDict(from_attributes=True, coerce_numbers_to_str=True)
    id: str
    email: str
    display_name: str


class UserOutNoName(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    email: str


class UserOutWithAge(_UserOut):
    age: int


class UserOutMaskedHash(_UserOut):
    password_hash: SecretStr


class UserOutCamelCase(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    email: str
    display_name: str = Field(serialization_alias="displayName")


def v1_user_out():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

        class UserOut(BaseModel):
            id: int
            email: str
            display_name: str

            class Config:
                orm_mode = True

    return UserOut


class UserOutFrozen(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)
    id: int
    email: str
    display_name: str


class UserOutAnnotated(BaseModel):
    """Right: documented fields, no input rule repeated."""
    model_config = ConfigDict(from_attributes=True, extra="ignore")
    id: Annotated[int, Field(ge=1, description="the user's number")]
    email: Annotated[str, Field(description="as stored")]
    display_name: Annotated[str, Field(description="as stored")]


class UserOutEmailStr(_UserOut):
    email: EmailStr  # the input's rule, re-checked on the way out


class UserOutNameLimit(_UserOut):
    display_name: Annotated[str, Field(max_length=40)]


class UserOutLowerNoReturn(_UserOut):
    @field_validator("email")
    @classmethod
    def lower(cls, value: str):
        value.lower()  # never returned: the field becomes None


class UserOutModelNoReturn(_UserOut):
    @model_validator(mode="after")
    def no_secrets(self):
        assert not hasattr(self, "password_hash")


@pytest.mark.parametrize("user_out", [lesson["UserOut"], _UserOut, UserOutFrozen, UserOutAnnotated],
                         ids=["notebook", "reference", "frozen", "annotated, documented"])
async def test_user_out_right_answers_pass(user_out):
    report = await check_user_out.report(signup_app, user_out)
    assert report.passed, report.text()


SHAPE = "all three shapes"
ROWS = "GET /users (dict rows, every column)"
USER_OUT_WRONG = {
    "hash in the response": (UserOutWithHash, SHAPE, "never a secret"),
    "no from_attributes": (UserOutNoAttributes, "UserOut.model_validate(user) reads an ORM object",
                           "attributes the model must allow"),
    "extra='allow'": (UserOutAllowsExtra, ROWS, "extra='allow' copies every key"),
    "id as text": (UserOutIdAsText, SHAPE, "Declare id with the type the record holds (int)"),
    "display_name missing": (UserOutNoName, SHAPE, "Declare display_name"),
    "age too": (UserOutWithAge, SHAPE, "exactly what the client may see"),
    "the hash masked": (UserOutMaskedHash, SHAPE, "not even masked"),
    "a camelCase alias": (UserOutCamelCase, SHAPE, "an alias renames"),
    "v1 orm_mode": (v1_user_out(), "UserOut uses Pydantic v2 spellings", "orm_mode"),
    "EmailStr on the way out": (UserOutEmailStr, "UserOut.model_validate(user) reads an ORM object: an imported",
                                "rules for what may come in belong to SignupIn"),
    "the input's name limit on the way out": (UserOutNameLimit, "UserOut.model_validate(user) reads an ORM object: an "
                                              "imported", "one stored user that predates them"),
    "a field validator without return": (UserOutLowerNoReturn, SHAPE, "`return`"),
    "a model validator without return self": (UserOutModelNoReturn, "UserOut.model_validate(user) reads an ORM object",
                                              "`return self`"),
}


@pytest.mark.parametrize("mistake", USER_OUT_WRONG, ids=list(USER_OUT_WRONG))
async def test_user_out_mistakes_fail(mistake):
    user_out, item, hint = USER_OUT_WRONG[mistake]
    report = await check_user_out.report(signup_app, user_out)
    assert_fails_at(report, item, hint)


async def test_extra_allow_leaks_only_through_the_dict_rows():
    report = await check_user_out.report(signup_app, UserOutAllowsExtra)
    leak = [i for i in report.failures if i.name == "no password or hash in any response"]
    assert leak and leak[0].observed == "GET /users: the password's hash", report.text()


async def test_the_checks_own_code_raises_no_warning():
    from conftest import warnings_from_checks

    assert await warnings_from_checks(
        check_signup_model.report(signup_app, model(model_config=ConfigDict(extra="forbid"))),
        check_user_out.report(signup_app, UserOutWithHash),
    ) == []


# ---- what the lesson says, run on the installed versions -------------------------------------

SOLUTION = Path(__file__).resolve().parent.parent / "solutions" / "03_validators.ipynb"


def test_the_pattern_lets_through_what_email_str_refuses():
    from pydantic import TypeAdapter, ValidationError

    email = TypeAdapter(EmailStr)
    for address in ["robin..lee@example.org", "robin@-example.org"]:
        assert EMAIL_PATTERN.match(address)
        with pytest.raises(ValidationError):
            email.validate_python(address)
    assert email.validate_python("Sam.Lee@Example.COM") == "Sam.Lee@example.com"  # the domain only


def test_secret_str_hides_the_password_a_str_shows():
    plain = lesson["PlainLogin"](email="ada@example.com", password="correct-horse-1")
    secret = lesson["SecretLogin"](email="ada@example.com", password="correct-horse-1")
    assert "correct-horse-1" in repr(plain) and "correct-horse-1" in plain.model_dump_json()
    assert "correct-horse-1" not in repr(secret) + secret.model_dump_json() + str(secret.model_dump())


async def test_a_refused_password_is_echoed_in_the_422():
    from checks import serve

    async with serve(signup_app(lesson["SignupIn"], None), raise_app_exceptions=False) as client:
        response = await client.post("/signup", json={"email": "Ada@Example.com", "password": "short"})
    assert response.status_code == 422
    assert {"loc": ["body", "password"], "input": "short"}.items() <= response.json()["detail"][0].items()


def test_routes_follow_fastapis_own_guidance():
    """A return type on every route, or response_model when it returns something else (the leaky demo excepted)."""
    import ast

    for cell in json.loads(SOLUTION.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        for node in ast.walk(ast.parse("".join(cell["source"]).replace("await ", ""))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "leaky_signup":
                routes = [d for d in node.decorator_list if isinstance(d, ast.Call)
                          and getattr(d.func, "attr", "") in {"get", "post", "put", "patch", "delete"}]
                for route in routes:
                    has_model = any(k.arg == "response_model" for k in route.keywords)
                    assert node.returns is not None, node.name
                    assert has_model == (ast.unparse(node.returns) == "Any"), node.name
                    assert isinstance(node, ast.FunctionDef), f"{node.name}: in doubt, def"


def test_a_model_wide_strip_strips_the_password_too():
    """Why the lesson strips per field: str_strip_whitespace also strips a SecretStr."""
    class Stripped(BaseModel):
        model_config = ConfigDict(str_strip_whitespace=True)
        password: SecretStr

    assert Stripped(password="  secret pass 12  ").password.get_secret_value() == "secret pass 12"
    kept = lesson["SignupIn"].model_validate({"email": " Ada@Example.com ", "password": "  secret pass 12  ",
                                              "password_confirm": "  secret pass 12  ", "display_name": " Ada ",
                                              "age": 40})
    assert (kept.password.get_secret_value(), kept.email, kept.display_name) == ("  secret pass 12  ",
                                                                                   "ada@example.com", "Ada")


async def test_what_a_validator_raises_decides_the_status():
    """The demo's claims: ValueError and assert → 422 naming the field; HTTPException its own status; others 500."""
    from checks import serve

    expected = [(lesson["raises"](ValueError("under 18")), 422, "value_error"), (lesson["asserts"], 422, "assertion_error"),
                (lesson["raises"](HTTPException(400, "under 18")), 400, None), (lesson["raises"](TypeError("x")), 500, None)]
    for refuse, status, kind in expected:
        async with serve(lesson["adults_app"](refuse), raise_app_exceptions=False) as client:
            response = await client.post("/people", json={"age": 12})
        assert response.status_code == status
        if kind:
            assert response.json()["detail"][0]["type"] == kind and response.json()["detail"][0]["loc"] == ["body", "age"]


def test_python_O_removes_the_assert():
    import subprocess
    import sys

    code = ("from pydantic import BaseModel, field_validator\n"
            "class P(BaseModel):\n    age: int\n"
            "    @field_validator('age')\n    @classmethod\n"
            "    def adult(cls, age):\n        assert age >= 18\n        return age\n"
            "print(P(age=12).age)")
    assert subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True).stdout.strip() == "12"
