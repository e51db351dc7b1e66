"""``rest-bench``: streaming latency/FPS benchmark."""

from __future__ import annotations

import sys

from rest_lightning.cli.common import not_built

main = not_built("rest-bench", "streaming latency/FPS benchmark", 6)

if __name__ == "__main__":
    sys.exit(main())
