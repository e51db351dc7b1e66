"""``rest-doctor``: the SLURM / torch.distributed preflight."""

from __future__ import annotations

import sys

from rest_lightning.cli.common import not_built

main = not_built("rest-doctor", "the SLURM / torch.distributed preflight", 8)

if __name__ == "__main__":
    sys.exit(main())
