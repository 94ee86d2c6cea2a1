"""`python -m soak`: run the soak (see soak/run.py)."""

from gevent import monkey

monkey.patch_all()  # the soak's own process only: its clients are greenlets

from .run import main  # noqa: E402

raise SystemExit(main())
