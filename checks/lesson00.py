"""Lesson 00, welcome: the warm-up route."""

from __future__ import annotations

import random

from .harness import serve
from .observe import json_body, show_response, status_hint
from .runner import check

NAMES = ["Grace", "Linus", "Ada", "Guido", "Barbara", "Tim", "Margaret", "Ken"]


@check("Lesson 00 · GET /hello greets by name", limit_s=5)
async def check_hello(report, app):
    # A name picked at random each run: a route that hard-codes the examples does not pass.
    cases = [(None, "world"), ("Ada", "Ada"), (random.choice(NAMES) + str(random.randint(10, 99)), None)]
    async with serve(app, raise_app_exceptions=False) as client:
        for name, shown in cases:
            shown = shown or name
            params = {} if name is None else {"name": name}
            url = "/hello" + (f"?name={name}" if name else "")
            response = await client.get("/hello", params=params)
            expected = {"message": f"Hello, {shown}!"}
            if response.status_code != 200:
                report.fail(f"GET {url} answers 200", observed=show_response(response, client),
                            expected="200", hint=status_hint(response, "GET", "/hello", client))
                return
            body = json_body(response)
            if body == expected:
                report.add(f"GET {url} → {expected}", True)
            else:
                if body is None:
                    hint = "The route answered `null`: did you forget to `return` the dict?"
                elif not isinstance(body, dict):
                    hint = "Return a dict with a \"message\" key: FastAPI turns it into a JSON object."
                elif name is None:
                    hint = "Without ?name=, the name defaults to \"world\": give the parameter a default value."
                else:
                    hint = "Use the `name` parameter in the message rather than a fixed text."
                report.fail(f"GET {url} → {expected}", observed=show_response(response), expected=str(expected), hint=hint)
