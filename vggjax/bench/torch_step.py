"""The same train step in PyTorch (torchvision's model), the comparison ``--torch`` times in
turns with JAX."""

from __future__ import annotations

import time
from typing import Any, Callable

from vggjax.bench.step import LEARNING_RATE, MOMENTUM, NUM_CLASSES, WEIGHT_DECAY


def torch_step_setup(
    arch: str,
    size: int,
    batch: int,
    *,
    compile: bool,
    device: str = "cpu",
    bf16: bool = False,
    channels_last: bool = False,
) -> tuple[Callable[[], None], dict[str, Any]]:
    """``torchvision.models.<arch>(num_classes=10)`` trained by SGD(0.01, momentum 0.9, wd 5e-4).

    Cross-entropy, ``zero_grad(set_to_none=True)`` → forward → backward →
    ``optimizer.step()`` on a fixed random batch. With ``compile`` the model is wrapped in
    ``torch.compile`` (default mode). On a GPU (``device="cuda"``) the step ends with
    ``torch.cuda.synchronize()`` so wall time is device time; ``bf16`` runs the forward
    under ``torch.autocast(dtype=torch.bfloat16)`` (weights and the optimizer stay
    float32, as in JAX's bf16 compute) and ``channels_last`` stores images and weights
    NHWC (what cuDNN's fastest kernels want). Runs the first step (its time includes
    compilation) and returns ``(one_step, {"first_step_s", "threads", ...})``.
    """
    import torch
    import torchvision

    torch.manual_seed(0)
    dev = torch.device(device)
    model = getattr(torchvision.models, arch)(num_classes=NUM_CLASSES).to(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    model.train()
    opt = torch.optim.SGD(
        model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    run = torch.compile(model) if compile else model
    x = torch.randn(batch, 3, size, size, device=dev).to(memory_format=fmt)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=dev)
    cuda = dev.type == "cuda"

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(run(x), y)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    one()
    info: dict[str, Any] = {
        "first_step_s": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "bf16_autocast": bf16,
        "channels_last": channels_last,
    }
    if cuda:
        info["peak_device_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        info["device_name"] = torch.cuda.get_device_name()
    return one, info
