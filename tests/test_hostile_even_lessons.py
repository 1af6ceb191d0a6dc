"""Hostile code in real kernels, lessons 00, 02, 04, 06 (see hostile.py)."""

import pytest

from hostile import SOLUTIONS, check_every_exercise_gets_a_hostile_body_somewhere, run_hostile_code


@pytest.mark.parametrize("path", SOLUTIONS[0::2], ids=lambda p: p.stem)
def test_hostile_code_is_stopped_explained_and_the_kernel_lives_on(path):
    run_hostile_code(path)


def test_every_exercise_gets_a_hostile_body_somewhere():
    check_every_exercise_gets_a_hostile_body_somewhere()
