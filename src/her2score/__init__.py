"""her2score: HER2 scoring in breast cancer from digital pathology.

Importing the package is cheap (no torch): heavy libraries are imported inside the functions and
commands that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
