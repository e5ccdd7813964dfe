"""``python -m gateway`` is ``luckey-gateway``."""

from gateway.cli import main

raise SystemExit(main())
