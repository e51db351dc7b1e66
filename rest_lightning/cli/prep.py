"""``rest-prep``: dataset preparation (raw videos -> WebDataset shards)."""

from __future__ import annotations

import sys

from rest_lightning.cli.common import not_built

main = not_built("rest-prep", "dataset preparation (raw videos -> WebDataset shards)", 3)

if __name__ == "__main__":
    sys.exit(main())
