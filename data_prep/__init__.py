"""Raw talking videos -> face-cropped 25 fps clips + 16 kHz audio -> WebDataset shards (DESIGN §6).

Public API: ``PrepConfig``, ``run_prep``, ``PrepSummary`` (import from ``data_prep.config`` /
``data_prep.run``; this package imports nothing at import time).
"""
