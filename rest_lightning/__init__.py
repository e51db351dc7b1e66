"""rest_lightning: distributed training framework for REST (arXiv 2512.11229).

Importing the package does no work: no weights, no backend flags, no GPU (STYLE rule 9).
"""

__version__ = "0.1.0"
