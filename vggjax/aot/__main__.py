"""``python -m vggjax.aot``: see :mod:`vggjax.aot.cli`."""

from vggjax.aot.cli import run, setup_environment

setup_environment()  # before JAX starts a backend or loads a compiler plugin

if __name__ == "__main__":
    run()
