"""The text examples run end to end: the sentiment example logs word maps to TensorBoard, VADER is explained."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = [pytest.mark.examples, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sentiment_example_logs_word_importance_per_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    example = load("sentiment")
    results = example.main(["--fast", "--log-dir", str(tmp_path)])
    assert list(results) == list(example.PROBES)
    for review, scores in results.items():
        assert [w for w, _ in scores] == review.split()  # one value per word, subword pieces joined
        assert all(0 <= s <= 1 for _, s in scores)
    html = next(tmp_path.rglob("words.html")).read_text()
    assert html.count("<span") == sum(len(r.split()) for r in example.PROBES)
    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*")).parent), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    images = [tag for tag in events.Tags()["images"] if tag.startswith("pami/sample_")]
    assert len(images) == 4  # PAMICallback(num_samples=4): highlighted words of each review
    first = events.Images(images[0])[0]
    assert first.width == 640 and first.height > 10


def test_sentiment_tokenizer_word_ids_group_pieces():
    example = load("sentiment")
    tokenizer = example.PieceTokenizer(["a wonderful soundtrack"])
    enc = tokenizer(["a wonderful soundtrack", "a"])
    assert tokenizer.tokens(enc["input_ids"][0]) == ["a", "wond", "##erfu", "##l", "soun", "##dtra", "##ck"]
    assert enc["word_ids"].tolist() == [[0, 1, 1, 1, 2, 2, 2], [0, -1, -1, -1, -1, -1, -1]]


def test_vader_example_explains_a_black_box_scorer():
    pytest.importorskip("vaderSentiment")
    results = load("vader_sentiment").main([])
    words = dict(zip("the plot was not good at all".split(), results["words"]["the plot was not good at all"], strict=True))
    windows = dict(zip("the plot was not good at all".split(), results["windows of 3"]["the plot was not good at all"], strict=True))
    assert words["good"] > 0.3 and words["not"] == 0  # each word alone: "good" is positive
    assert windows["not"] < 0  # in windows of three, VADER's negation "not good" shows
