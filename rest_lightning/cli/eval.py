"""``rest-eval``: the paper-table evaluation suite."""

from __future__ import annotations

import sys

from rest_lightning.cli.common import not_built

main = not_built("rest-eval", "the paper-table evaluation suite", 9)

if __name__ == "__main__":
    sys.exit(main())
