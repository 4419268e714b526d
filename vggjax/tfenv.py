"""TensorFlow's environment defaults for vggjax's command-line entry points.

TensorFlow only feeds the input pipeline (and is asked its version), so its C++ logs and its
oneDNN notice (4 lines on every run) are noise here. TF reads both variables when it is first
imported, so :func:`quiet_tensorflow` must run before anything imports it; a value already in
the environment wins.
"""

import os


def quiet_tensorflow() -> None:
    """Default ``TF_CPP_MIN_LOG_LEVEL=2`` and ``TF_ENABLE_ONEDNN_OPTS=0``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
