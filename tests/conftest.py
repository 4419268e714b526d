"""Test set-up: 8 fake CPU devices, set before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TensorFlow must never touch a GPU in tests.
# No test may reach a host outside this machine: datasets are embedded, prepared, or served from
# 127.0.0.1 by the tests that switch this off (vggjax.data.prepare).
os.environ["VGGJAX_OFFLINE"] = "1"
