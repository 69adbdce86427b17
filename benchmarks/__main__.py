"""``python -m benchmarks``: run the suite and write ``results.json`` and ``results.md``."""

from benchmarks.runner import main

if __name__ == "__main__":
    raise SystemExit(main())
