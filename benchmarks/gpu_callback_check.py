"""On a CUDA machine: PAMICallback under fp32 / bf16-mixed / 16-mixed leaves training bitwise unchanged.

For each precision: a seeded fit with the callback and two without (the second is a control: when the
two plain fits differ, the GPU itself is not deterministic and the comparison says nothing). Also the
callback's scores of one model on the GPU against the CPU (float32, TF32 off).

    python benchmarks/gpu_callback_check.py
"""

from __future__ import annotations

import io
import os
import sys

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import lightning as L
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from helpers.callbacks import callback, loaders, scores
from helpers.models import TinyLit


def _trainer(callbacks: list, accelerator: str = "gpu", **kwargs: object) -> L.Trainer:
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=2,
        limit_train_batches=3,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        deterministic="warn",
        **kwargs,
    )


def _fit(callbacks: list, precision: str) -> tuple[L.Trainer, dict, torch.Tensor]:
    L.seed_everything(0, verbose=False)
    model = TinyLit()
    tr = _trainer(callbacks, precision=precision)
    tr.fit(model, *loaders())
    return tr, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, torch.cuda.get_rng_state()


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    for precision in ("32-true", "bf16-mixed", "16-mixed"):
        tr, with_cb, rng_with = _fit([callback(pointing_tolerance=0)], precision)
        _, plain, rng_plain = _fit([], precision)
        _, control, _ = _fit([], precision)
        same = all(torch.equal(with_cb[k], plain[k]) for k in plain)
        control_same = all(torch.equal(control[k], plain[k]) for k in plain)
        print(f"[{precision}] scores {({k: round(v, 4) for k, v in scores(tr).items()})}")
        print(f"[{precision}] weights_identical_with_callback: {same} (control, two plain fits: {control_same}); cuda_rng_identical: {torch.equal(rng_with, rng_plain)}")

    L.seed_everything(1, verbose=False)
    model, val = TinyLit(), loaders()[1]
    got = {}
    for accelerator in ("cpu", "gpu"):
        cb = callback(on_validate=True, pointing_tolerance=0)
        tr = _trainer([cb], accelerator=accelerator)
        tr.validate(model, val, verbose=False)
        got[accelerator] = scores(tr)
    diff = max(abs(got["cpu"][k] - got["gpu"][k]) for k in got["cpu"])
    print(f"gpu_vs_cpu_scores_max_abs_diff: {diff:.2e} ({'ok' if diff < 1e-4 else 'MISMATCH'}) {got['gpu']}")

    # A checkpoint loaded onto the GPU: the restored drift history comes back on the CPU.
    buffer = io.BytesIO()
    torch.save(cb.state_dict(), buffer)
    buffer.seek(0)
    restored = callback()
    restored.load_state_dict(torch.load(buffer, map_location="cuda", weights_only=True))
    maps = restored.last_maps
    print(f"restored_last_maps_device: {None if maps is None else maps.device} ({'ok' if maps is not None and maps.device.type == 'cpu' else 'WRONG'})")


if __name__ == "__main__":
    main()
