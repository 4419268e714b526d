"""``python -m vggjax.bench``."""

from vggjax.bench.cli import main

main()
