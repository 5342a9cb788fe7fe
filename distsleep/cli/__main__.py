"""`python -m distsleep.cli SUBCOMMAND ...`, the same as the `distsleep` command."""

import sys

from distsleep.cli import main

sys.exit(main())
