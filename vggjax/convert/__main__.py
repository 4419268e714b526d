"""``python -m vggjax.convert``: see :mod:`vggjax.convert.cli`."""

from vggjax.convert.cli import main

if __name__ == "__main__":
    main()
