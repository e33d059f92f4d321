"""GPU check: token sequences and 1-D signals give the CPU maps on CUDA (same engine), plus one timing.

Run from the repository root on a CUDA machine: ``python benchmarks/gpu_tokens_check.py``.
On an H100 (2026-11): max |gpu - cpu| <= 1.2e-7 for tokens and signals; 8192 masked token inputs
(64 sequences x 128 tokens, TokenWindows(5)) in 0.036 s.
"""
import sys
import time

sys.path.insert(0, "tests")  # the token test models
import torch
from test_tokens import MASK, BagModel, sequences

from pami_lightning import PAMI, AttentionMask, Blur, SlidingWindow, TokenMask, TokenWindows, Words

assert torch.cuda.is_available()
model = BagModel().eval()
x = sequences([5, 9, 3, 12], seed=2)
x["word_ids"] = torch.where(x["attention_mask"].bool(), torch.arange(12).div(2, rounding_mode="floor").expand(4, -1), -1)
for part in (TokenWindows(3, 1), Words()):
    for masker in (TokenMask(MASK), AttentionMask()):
        cpu = PAMI(model, part, masker, batch_size=8).explain(x, target=[0, 1, 2, 0])
        gx = {k: v.cuda() for k, v in x.items()}
        gpu = PAMI(model.cuda(), part, masker, batch_size=8).explain(gx, target=[0, 1, 2, 0])
        model.cpu()
        assert gpu.device.type == "cuda"
        err = (gpu.cpu() - cpu).abs().max().item()
        print(part, masker, "max |gpu - cpu|", err)
        assert err < 1e-5
torch.manual_seed(0)
conv = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 5, padding=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
s = torch.rand(3, 2, 500)
cpu = PAMI(conv, SlidingWindow(20, 5, spatial_dims=1), Blur(15, 5), batch_size=64).explain(s, target=1)
gpu = PAMI(conv.cuda(), SlidingWindow(20, 5, spatial_dims=1), Blur(15, 5), batch_size=64).explain(s.cuda(), target=1)
print("signals max |gpu - cpu|", (gpu.cpu() - cpu).abs().max().item())
assert (gpu.cpu() - cpu).abs().max().item() < 1e-5
# A throughput sanity on tokens: 64 sequences of 128 tokens, windows of 5.
big = sequences([128] * 64, seed=3)
big = {k: v.cuda() for k, v in big.items()}
m = BagModel().cuda().eval()
e = PAMI(m, TokenWindows(5, 1), TokenMask(MASK), batch_size=1024)
e.explain(big, target=0)  # warm-up
torch.cuda.synchronize()
t = time.perf_counter()
e.explain(big, target=0)
torch.cuda.synchronize()
print(f"tokens: {64*128} masked inputs in {time.perf_counter()-t:.3f}s")
print("OK")
