"""`course`: the one command line of the course (build, reset, progress, grade)."""

from __future__ import annotations

import sys

from . import build


def main(argv: list[str] | None = None) -> int:
    return build.main(argv)


if __name__ == "__main__":
    sys.exit(main())
