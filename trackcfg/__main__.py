"""``python -m trackcfg``: the same command line as the ``trackcfg`` console script."""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":
    main()
