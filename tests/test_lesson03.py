"""Lesson 03's checks: right models pass; the usual validator mistakes fail with their hint."""

from typing import Annotated

import pytest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from checks.lesson03 import EMAIL, _SignupIn, _UserOut, check_signup_model, check_user_out
from conftest import assert_feedback_rules, failure_text, names, notebook_namespace

pytestmark = pytest.mark.anyio
lesson = notebook_namespace("03_validators")
signup_app = lesson["signup_app"]


def email_rule(cls, value):
    value = value.lower()
    if not EMAIL.match(value):
        raise ValueError("not an email address")
    return value


def strong(cls, value):
    if not (any(c.isalpha() for c in value) and any(c.isdigit() for c in value)):
        raise ValueError("use letters and digits")
    return value


def confirmed(self):
    if self.password != self.password_confirm:
        raise ValueError("passwords do not match")
    return self


def model(**overrides):
    """A SignupIn built like the notebook's, with some parts swapped for a mistake."""
    namespace = {
        "model_config": ConfigDict(extra="forbid", str_strip_whitespace=True),
        "__annotations__": {"email": str, "password": str, "password_confirm": str, "display_name": str, "age": int},
        "password": Field(min_length=12, max_length=128),
        "display_name": Field(min_length=1, max_length=40),
        "age": Field(ge=13, le=130),
        "email_rule": field_validator("email")(email_rule),
        "strong": field_validator("password")(strong),
        "confirmed": model_validator(mode="after")(confirmed),
    }
    namespace.update(overrides)
    return type("SignupIn", (BaseModel,), namespace)


def letters_and_digits(value: str) -> str:
    if not (any(c.isalpha() for c in value) and any(c.isdigit() for c in value)):
        raise ValueError("letters and digits, please")
    return value


def lower_email(value: str) -> str:
    value = value.strip().lower()
    if not EMAIL.match(value):
        raise ValueError("not an email")
    return value


class AnnotatedSignup(BaseModel):
    """A second right answer: constraints and validators as Annotated types."""

    model_config = ConfigDict(extra="forbid")

    email: Annotated[str, AfterValidator(lower_email)]
    password: Annotated[str, StringConstraints(min_length=12, max_length=128), AfterValidator(letters_and_digits)]
    password_confirm: str
    display_name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)]
    age: Annotated[int, Field(ge=13, le=130)]

    @model_validator(mode="after")
    def same(self):
        if self.password != self.password_confirm:
            raise ValueError("passwords differ")
        return self


@pytest.mark.parametrize("signup_in", [lesson["SignupIn"], AnnotatedSignup, model()], ids=["notebook", "annotated", "rebuilt"])
async def test_signup_right_answers_pass(signup_in):
    report = await check_signup_model.report(signup_app, signup_in)
    assert report.passed, report.text()


def returns_instead_of_raising(cls, value):
    if not any(c.isdigit() for c in value):
        return ValueError("use digits")  # returned, not raised: the value becomes this object
    return value


def before_mode_compare(cls, data):
    if data["password"] != data["password_confirm"]:  # raw input: may be anything, keys may be missing
        raise ValueError("passwords do not match")
    return data


def type_error_rule(cls, value):
    if "@" not in value:
        raise TypeError("bad email")  # not a ValueError: Pydantic does not turn it into a 422
    return value.lower()


MISTAKES = {
    "validator returns instead of raising": (dict(strong=field_validator("password")(returns_instead_of_raising)),
                                             "a password without digits"),
    "mode='before' for the confirmation": (dict(confirmed=model_validator(mode="before")(classmethod(before_mode_compare))),
                                           "no malformed payload causes a 500"),
    "extra fields ignored": (dict(model_config=ConfigDict(str_strip_whitespace=True)), "an extra field is_admin"),
    "whitespace not stripped": (dict(model_config=ConfigDict(extra="forbid")), "a valid signup (Sam.Lee@Example.COM)"),
    "TypeError in a validator": (dict(email_rule=field_validator("email")(type_error_rule)),
                                 "an email without @"),
    "no age bounds": (dict(age=Field(ge=0)), "age 12"),
}


@pytest.mark.parametrize("mistake", MISTAKES, ids=list(MISTAKES))
async def test_signup_mistakes_fail_where_they_should(mistake):
    overrides, failed_item = MISTAKES[mistake]
    report = await check_signup_model.report(signup_app, model(**overrides))
    assert any(name.startswith(failed_item) for name in names(report)), report.text()
    assert_feedback_rules(report)


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


class UserOutAsProperty(BaseModel):
    """A second right answer: from_attributes through model_config on a subclass."""

    model_config = ConfigDict(from_attributes=True, frozen=True)
    id: int
    email: str
    display_name: str


@pytest.mark.parametrize("user_out", [lesson["UserOut"], _UserOut, UserOutAsProperty], ids=["notebook", "reference", "frozen"])
async def test_user_out_right_answers_pass(user_out):
    report = await check_user_out.report(signup_app, user_out)
    assert report.passed, report.text()


@pytest.mark.parametrize(
    "user_out, failed, hint",
    [
        (UserOutWithHash, ["the body has exactly id, email and display_name", "no secret in the response"], "only the response model's fields"),
        (UserOutNoAttributes, ["UserOut.model_validate(user) reads an ORM object"], "attributes the model must allow"),
    ],
    ids=["hash in the response", "no from_attributes"],
)
async def test_user_out_mistakes_fail(user_out, failed, hint):
    report = await check_user_out.report(signup_app, user_out)
    assert names(report) == failed, report.text()
    assert hint in failure_text(report)
    assert_feedback_rules(report)


async def test_the_checks_own_code_raises_no_warning():
    from conftest import warnings_from_checks

    assert await warnings_from_checks(
        check_signup_model.report(signup_app, model(model_config=ConfigDict(extra="forbid"))),
        check_user_out.report(signup_app, UserOutWithHash),
    ) == []
