"""`python -m attnbench ...` is `bench ...`."""

from attnbench.cli.main import main

raise SystemExit(main())
