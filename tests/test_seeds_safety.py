"""OpenCV's SEEDS on small and thin images: never a hang or a dead process.

OpenCV's SEEDS does not check the image size: on 1x1-3x3 images it loops forever, on 4x4, 2x100 or
64x3 (and 5x5 / 8x8 with 30 superpixels) it dies with SIGSEGV. ``seeds_supported`` mirrors its grid
set-up; ``Superpixels`` leaves SEEDS out where it is false. Everything that could reach OpenCV on
such a size runs in a subprocess with a timeout, so a regression fails these tests instead of
killing or hanging the test runner.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from pami_lightning.partitions.segmenters import _seeds_problem, seeds_supported

pytest.importorskip("cv2.ximgproc", reason="SEEDS needs opencv-contrib")


def _isolated(code: str, *args: str, timeout: float = 120) -> str:
    """Run ``code`` in a fresh interpreter; its stdout. A hang, a signal or an error fails the test."""
    try:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hung for {timeout} s: {exc.stdout!r}\n{exc.stderr!r}")
    assert done.returncode == 0, f"exit status {done.returncode} (negative: killed by that signal)\n{done.stdout}\n{done.stderr}"
    return done.stdout


#: Runs raw OpenCV SEEDS on each ``[h, w, num_superpixels, num_levels]`` in a forked child (an alarm
#: ends hangs) and prints, per case, "ok", "hang", "bad labels" or the signal that killed it.
_PROBE = """
    import json, os, signal, sys
    import cv2, numpy as np

    def probe(h, w, n, levels):
        pid = os.fork()
        if pid == 0:  # the child: only numpy and OpenCV loaded, no threads
            signal.alarm(3)
            image = np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w, 3)).astype(np.uint8)
            seeds = cv2.ximgproc.createSuperpixelSEEDS(image_width=w, image_height=h, image_channels=3, num_superpixels=n,
                                                       num_levels=levels, prior=2, histogram_bins=5, double_step=True)
            seeds.iterate(image, 10)
            labels = seeds.getLabels()
            os._exit(0 if labels.shape == (h, w) and 0 <= labels.min() and labels.max() < seeds.getNumberOfSuperpixels() else 3)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            return "hang" if os.WTERMSIG(status) == signal.SIGALRM else signal.Signals(os.WTERMSIG(status)).name
        return "ok" if os.WEXITSTATUS(status) == 0 else "bad labels"

    print(json.dumps([probe(*case) for case in json.loads(sys.argv[1])]))
"""

#: Sizes on each side of the rule's boundary, ``(h, w, num_superpixels, num_levels)``.
SUPPORTED = [(6, 6, 10, 5), (8, 8, 20, 5), (10, 10, 30, 5), (2, 6, 10, 5), (2, 20, 10, 5), (4, 40, 10, 5), (6, 15, 10, 5),
             (2, 60, 30, 5), (6, 45, 30, 5), (45, 6, 30, 5), (32, 32, 30, 5), (224, 224, 30, 5), (6, 6, 10, 2), (40, 12, 50, 3)]
#: ... where OpenCV fails every time: no block level fits (it loops forever), a grid with no row or
#: column of initial superpixels, or an empty top-level grid.
UNSUPPORTED = [(1, 1, 10, 5), (3, 3, 30, 5), (2, 21, 10, 5), (4, 41, 10, 5), (2, 61, 30, 5), (64, 3, 10, 5), (2, 100, 10, 5),
               (6, 16, 10, 5), (6, 46, 30, 5), (4, 200, 10, 5), (6, 1000, 30, 5)]
#: ... and with a single level, whose top blocks OpenCV never initialises: it crashes or returns
#: garbage labels most of the time (341 of 372 sizes probed), so the rule rejects these too.
ONE_LEVEL = [(5, 5, 30, 5), (8, 8, 30, 5), (4, 4, 10, 5), (2, 5, 10, 5), (4, 13, 30, 5)]


def test_the_rule_sorts_the_probed_sizes() -> None:
    assert all(seeds_supported(*case) for case in SUPPORTED)
    assert not any(seeds_supported(*case) for case in UNSUPPORTED + ONE_LEVEL)
    assert all("single block level" in str(_seeds_problem(*case)) for case in ONE_LEVEL)
    assert not seeds_supported(0, 10) and not seeds_supported(10, 0)


@pytest.mark.slow
def test_the_rule_matches_a_fresh_probe_of_opencv() -> None:
    cases = SUPPORTED + UNSUPPORTED
    results = json.loads(_isolated(_PROBE, json.dumps(cases), timeout=180))
    outcome = dict(zip(cases, results, strict=True))
    assert all(outcome[c] == "ok" for c in SUPPORTED), outcome
    assert all(outcome[c] != "ok" for c in UNSUPPORTED), outcome  # this is what Superpixels keeps OpenCV away from
    assert {outcome[(1, 1, 10, 5)], outcome[(3, 3, 30, 5)]} == {"hang"}


@pytest.mark.slow
def test_paper_ensemble_finishes_on_every_small_and_thin_image() -> None:
    # felzenszwalb, SLIC (more segments than pixels) and watershed (more markers than pixels) run
    # everywhere; SEEDS is left out where it cannot run. Every pixel is covered once per setting that ran.
    code = """
        import json, warnings
        import torch
        from pami_lightning import PAMI, Constant, Superpixels

        sizes = [(k, k) for k in range(1, 33)] + [(2, 100), (100, 2), (4, 200), (200, 4), (6, 1000), (1000, 6),
                                                   (3, 64), (64, 3), (5, 100), (1, 50), (50, 1)]
        paper = Superpixels.paper()
        out = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the "left out" warnings; checked in test_left_out_settings_are_warned_once
            for h, w in sizes:
                masks = paper.masks(torch.rand(3, h, w, generator=torch.Generator().manual_seed(h * w)))
                coverage = masks.sum(0).unique().tolist()
                out[f"{h}x{w}"] = [coverage, len(paper.left_out(h, w))]
            net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4))
            for h, w in [(1, 1), (3, 3), (5, 5), (2, 100)]:
                heat = PAMI(net, paper, Constant(0.0)).explain(torch.rand(1, 3, h, w))
                assert heat.shape == (1, h, w) and bool(torch.isfinite(heat).all())
        print(json.dumps(out))
    """
    out = json.loads(_isolated(code, timeout=240))
    assert len(out) == 43
    for size, (coverage, left_out) in out.items():
        assert coverage == [20 - left_out], size
    assert out["1x1"][1] == out["2x100"][1] == out["5x5"][1] == 3 and out["32x32"][1] == 0
    assert [out[f"{k}x{k}"][1] for k in (6, 8, 10)] == [2, 1, 0]  # 10, then 20, then 30 superpixels fit


@pytest.mark.slow
def test_seeds_refuses_sizes_it_cannot_segment_and_the_ensemble_says_so() -> None:
    code = """
        import warnings
        import numpy as np, torch
        from pami_lightning import Superpixels
        from pami_lightning.partitions.segmenters import seeds

        try:
            seeds(np.zeros((5, 5, 3), np.uint8), num_superpixels=30)
        except ValueError as exc:
            print("seeds:", exc)
        try:
            Superpixels([("seeds", {"num_superpixels": 30})]).masks(torch.rand(3, 8, 8))
        except ValueError as exc:
            print("alone:", exc)
        paper = Superpixels.paper()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                paper.masks(torch.rand(3, 7, 7))
                paper.masks(torch.rand(1, 7, 7), guide=torch.rand(3, 7, 7))  # a second run, same size
            paper.masks(torch.rand(3, 12, 12))
        print("warned:", len(caught), caught[0].message if caught else "")
    """
    seeds_line, alone, warned = _isolated(code).splitlines()
    assert "cannot segment a 5x5 image" in seeds_line and "num_superpixels=30" in seeds_line and "slic" in seeds_line
    assert alone.startswith("alone: Superpixels([('seeds', {'num_superpixels': 30})]) cannot segment 8x8 images")
    assert warned.startswith("warned: 1 Superpixels('paper'): seeds(num_superpixels=20, num_levels=5), seeds(num_superpixels=30, num_levels=5) "
                             "cannot segment 7x7 images")
    assert "the map averages the other 18 segmentations" in warned
