"""Lesson 13, exercise 2: a visit counter that two worker processes share without losing a visit.

First the learner's `count_visit` runs in this process (a new page visited twice: 1, then 2), so
an unfinished stub, an error or code that blocks the loop is reported as in every other check.
Then two forked workers take 40 visits of a new page at once (`two_workers`). Verdicts come from
exact signals: what the database holds afterwards, and whether the 40 answers are 1..40, each once.
Which of those fails tells the causes apart: a count kept in the process (the database holds
nothing), a read-then-write (the database holds fewer than 40), a count read back after the write
(40 stored, answers repeated), a write never committed.
"""

import tempfile
from collections import Counter

from ..harness import serve
from ..runner import check
from .visits import new_database, stored_hits, two_workers, visits_app

VISITS = 40
ATOMIC = ("Let the database do the +1: one statement that reads and writes the row together (an UPDATE whose "
          "SET adds one, or an upsert), with RETURNING for the new count; then commit.")


def _error(answers) -> str | None:
    return next((f"{status}: {hits}" for status, hits, _ in answers if status != 200), None)


@check("Lesson 13 · a visit counter two workers share, with no visit lost", limit_s=30)
async def check_visits(report, count_visit):
    if not await _one_process(report, count_visit):
        return
    result = await two_workers(count_visit, VISITS)
    _judge_workers(report, result)


async def _one_process(report, count_visit) -> bool:
    """A new page, visited twice in this process: 1, then 2. False when that already fails (reported)."""
    with tempfile.TemporaryDirectory(prefix="course-visits-") as folder:
        path = new_database(folder)
        app = visits_app(count_visit, path)
        async with serve(app, raise_app_exceptions=False) as client:
            answers = []
            for _ in range(2):
                response = await client.post("/visits/home")
                body = response.json() if response.headers.get("content-type") == "application/json" else {}
                answers.append((response.status_code, body.get("hits", body.get("error", response.text[:80]))))
        stored = stored_hits(path, "home")
    status, said = next(((s, h) for s, h in answers if s != 200), (200, None))
    if status != 200:
        stub = "NotImplementedError" in str(said)
        report.fail("a visit answers 200 with the page's count", observed=f"{status}: {said}", expected="200",
                    hint="The exercise is not written yet: replace the stub with your code and run its cell." if stub
                    else "Fix the error `count_visit` raised (shown above); it gets the request's session and the page.")
        return False
    report.add("the count is in the database, committed", stored == 2,
               observed=f"after two visits the database holds {'no row' if stored is None else stored} for the page",
               expected="2",
               hint=("The answers and the database disagree: answer the count the database holds after this visit."
                     if stored is not None else
                     "The session was closed without a commit, so the write was rolled back: commit it."
                     if app.state.writes else
                     "Nothing was written to the database: the count lives in the process, and each worker has its "
                     "own. Keep it in the `visits` table."))
    counts = [hits for _, hits in answers]
    report.add("a new page counts 1, its next visit 2", counts == [1, 2],
               observed=f"two visits of a new page answered {counts}", expected="[1, 2]",
               hint="Return the page's count after this visit: a page never seen before starts a row at 1.")
    return counts == [1, 2] and stored == 2


def _judge_workers(report, result) -> None:
    error = _error(result.answers)
    report.add(f"{VISITS} visits at once, on two workers, answer 200", error is None,
               observed=error or f"{VISITS} answers of 200", expected="200 each",
               hint=(f"{ATOMIC} Reading the row, then writing a value computed in Python, lets two workers insert "
                     "or write the same row at once." if error and ("UNIQUE" in error or "locked" in error) else
                     "A worker stopped answering once two visits came at once: something in `count_visit` blocked "
                     "its event loop (a `threading.Lock` held across an `await` waits forever on the loop's own "
                     "thread). Let the database order the writes." if error and error.startswith("no answer") else
                     "Two processes share the file: every visit must still succeed. " + ATOMIC))
    if error is not None:
        return
    hits, stored = result.hits, result.stored
    report.add("no visit is lost: the database counts every one", stored == VISITS,
               observed=f"after {VISITS} visits the database holds {'no row' if stored is None else stored}"
                        + (f" ({result.summary()})" if stored != VISITS else ""),
               expected=str(VISITS),
               hint=("Each worker counted in its own memory: processes share nothing. Keep the count in the database."
                     if stored is None else
                     "Two workers read the same count and both wrote it plus one: a visit lost each time. " + ATOMIC))
    # Compared as text: an answer of any JSON type (a list, an object) is judged, never a crash.
    seen = Counter(map(str, hits))
    repeated = sorted((hit for hit, n in seen.items() if n > 1), key=lambda hit: (len(hit), hit))
    numbers = [hit for hit in hits if isinstance(hit, int)]
    report.add("each visit answers its own count, 1 to 40 once each", seen == Counter(map(str, range(1, VISITS + 1))),
               observed=("counts answered more than once: " + ", ".join(repeated[:6]) if repeated else
                         f"{len(hits) - len(numbers)} answers are not a number, e.g. "
                         f"{next(str(h) for h in hits if not isinstance(h, int))[:40]}" if len(numbers) < len(hits) else
                         f"answers from {min(numbers, default=None)} to {max(numbers, default=None)}"),
               expected=f"1 to {VISITS}, each once",
               hint=("The count was read again after the write, when other visits had already added theirs. "
                     "Return what the write itself returned (RETURNING)." if stored == VISITS else ATOMIC))
