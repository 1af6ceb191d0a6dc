"""Instructor-only checks for lesson 14, for `course grade --extra-checks examples/instructor`.

Copy this folder out of the course repository before use (learners have the repository). Each
`@check` is named like a course check and runs right after it, with the same argument: the
learner's `make_app`. They probe what the course's checks leave out: the spec's boundaries.
"""

import random
import string

from checks import check, serve
from checks.lesson14 import Shop

ALICE = {"Authorization": "Bearer alice-token"}


def _card() -> str:
    return "".join(random.choices(string.digits, k=16))


@check("Lesson 14 · the spec's boundaries", limit_s=15)
async def check_contract(report, make_app):
    shop = Shop()
    try:
        async with serve(make_app(shop), raise_app_exceptions=False) as client:
            longest = "".join(random.choices(string.ascii_lowercase, k=40))
            for name, order, want in (
                ("an item of 40 characters, quantity 10", {"item": longest, "quantity": 10, "card": _card()}, 201),
                ("an item of 41 characters", {"item": longest + "x", "quantity": 1, "card": _card()}, 422),
                ("a card with a letter in it", {"item": "tea", "quantity": 1, "card": _card()[:15] + "x"}, 422),
            ):
                r = await client.post("/orders", json=order, headers=ALICE)
                if not report.add(f"{name} → {want}", r.status_code == want, observed=f"{r.status_code}",
                                  expected=str(want), hint="Read requirement 2 again: its bounds are inclusive."):
                    return
    finally:
        shop.remove()
