"""The product's version: what ``enrichment --version`` prints and the User-Agent names.

A module of its own, imported by the package and by the modules that need it,
so that no module imports the package itself (no import cycle).
"""

__version__ = "0.1.0"
