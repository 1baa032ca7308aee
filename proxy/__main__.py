"""`python -m proxy` is the same as the `rollout-proxy` command."""

import sys

from proxy.cli import main

sys.exit(main())
