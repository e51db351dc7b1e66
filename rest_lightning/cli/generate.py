"""``rest-generate``: streaming generation from a checkpoint."""

from __future__ import annotations

import sys

from rest_lightning.cli.common import not_built

main = not_built("rest-generate", "streaming generation from a checkpoint", 6)

if __name__ == "__main__":
    sys.exit(main())
