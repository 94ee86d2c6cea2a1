"""`python -m bench`: run the benchmarks (see bench/README.md)."""

from .run import main

raise SystemExit(main())
