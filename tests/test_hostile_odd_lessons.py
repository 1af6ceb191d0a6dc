"""Hostile code in real kernels, lessons 01, 03, 05 (see hostile.py)."""

import pytest

from hostile import SOLUTIONS, run_hostile_code


@pytest.mark.parametrize("path", SOLUTIONS[1::2], ids=lambda p: p.stem)
def test_hostile_code_is_stopped_explained_and_the_kernel_lives_on(path):
    run_hostile_code(path)
