"""``rest-ckpt``: checkpoint export and inspection."""

from __future__ import annotations

import sys

from rest_lightning.cli.common import not_built

main = not_built("rest-ckpt", "checkpoint export and inspection", 8)

if __name__ == "__main__":
    sys.exit(main())
