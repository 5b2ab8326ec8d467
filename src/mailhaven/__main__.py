"""`python -m mailhaven` runs the command line."""

from mailhaven.cli import main

raise SystemExit(main())
