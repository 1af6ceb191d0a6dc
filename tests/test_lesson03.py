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
    annotations = {"email": EmailStr, "password": SecretStr, "password_confirm": SecretStr, "display_name": str,
                   "age": int}
    annotations.update(overrides.pop("__annotations__", {}))
    namespace = {
        "model_config": ConfigDict(extra="forbid", str_strip_whitespace=True),
        "__annotations__": annotations,
        "password": Field(min_length=12, max_length=128),
        "display_name": Field(min_length=1, max_length=40),
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
    """A third right answer: `= Field(...)` defaults, email stripped before EmailStr runs."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    email: EmailStr
    password: SecretStr = Field(min_length=12, max_length=128)
    password_confirm: SecretStr
    display_name: str = Field(min_length=1, max_length=40)
    age: int = Field(ge=13, le=130)

    @field_validator("email", mode="after")
    @classmethod
    def lower(cls, value: str) -> str:
        return value.lower()

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
    value = value.lower()
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


NORMALISED = "a valid signup is stored normalised"
SIGNUP_WRONG = {
    "validator returns instead of raising": (dict(strong=field_validator("password")(returns_instead_of_raising)),
                                             "a password without digits", "instead of raising"),
    "mode='before' for the confirmation": (dict(confirmed=model_validator(mode="before")(classmethod(before_mode_compare))),
                                           "a missing password_confirm", "mode='before'"),
    "extra fields ignored": (dict(model_config=ConfigDict(str_strip_whitespace=True)), "an extra field is_admin",
                             "extra="),
    "whitespace not stripped": (dict(model_config=ConfigDict(extra="forbid")), "a valid signup", "spaces"),
    "TypeError in a validator": (dict(strong=field_validator("password")(type_error_rule)), "a password without digits",
                                 "other than ValueError"),
    "no age bounds": (dict(age=Field(ge=0)), "age 12", "Field(ge=..., le=...)"),
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
    "a SecretStr used as a str": (dict(strong=field_validator("password")(iterates_secret)),
                                  "SignupIn accepts a valid signup", "get_secret_value"),
    "EmailStr alone (domain lower-cased only)": (dict(lower=None), NORMALISED, "Lower-case the whole address"),
    "no maximum length": (dict(password=Field(min_length=12)), "generated payloads are refused or accepted",
                          "Compare your rules"),
}


@pytest.mark.parametrize("mistake", SIGNUP_WRONG, ids=list(SIGNUP_WRONG))
async def test_signup_mistakes_fail_where_they_should(mistake):
    overrides, failed_item, hint = SIGNUP_WRONG[mistake]
    report = await check_signup_model.report(signup_app, model(**overrides))
    assert_fails_at(report, failed_item, hint)


async def test_the_maximum_length_is_named_in_what_was_observed():
    report = await check_signup_model.report(signup_app, model(password=Field(min_length=12)))
    assert "a 100,000-character password → 201, expected 422" in failure_text(report), report.text()


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
    model_config = ConfigDict(from_attributes=True, extra="ignore")
    id: Annotated[int, Field(ge=1)]
    email: EmailStr
    display_name: Annotated[str, Field(max_length=40)]


@pytest.mark.parametrize("user_out", [lesson["UserOut"], _UserOut, UserOutFrozen, UserOutAnnotated],
                         ids=["notebook", "reference", "frozen", "annotated EmailStr"])
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
