"""The words a gradebook row can hold, and what grading one notebook yields."""

from __future__ import annotations

from dataclasses import dataclass, field

from .discovery import Job

PASSED, FAILED, TIMED_OUT, DIED, NOT_RUN = "passed", "failed", "timed out", "kernel died", "not run"
TAMPERED = "tampered"  # a result the course's check did not produce, or a check patched at run time: 0
GRADED, NOT_COURSE = "graded", "not a course notebook"
OVER_OUTPUT = "output over limit"  # a cell sent more than the output cap: its kernel was killed and replaced


@dataclass
class Outcome:
    job: Job
    results: dict[str, str]  # exercise id → passed / failed / timed out / kernel died / not run / tampered
    status: str
    seconds: float
    reports: dict[str, list] = field(default_factory=dict)  # exercise id → outputs, for feedback
    notes: dict[str, str] = field(default_factory=dict)  # exercise id → why it failed without a report
    events: list[str] = field(default_factory=list)  # what happened to the notebook as a whole

    @property
    def score(self) -> int:
        return sum(value == PASSED for value in self.results.values())
