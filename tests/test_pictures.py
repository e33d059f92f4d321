"""The callback's pictures and captions, built from known explanations and read back from TensorBoard and files.

No fits here (tests/test_callback_loggers.py runs real ones): ``build_report`` gets hand-made
explanations whose numbers are known, and ``dispatch`` writes them to a TensorBoardLogger and a
file logger whose output is read back.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Optional

import matplotlib
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from pami_lightning.callbacks import Pictures
from pami_lightning.callbacks import report as report_module
from pami_lightning.callbacks.drift import DriftHistory
from pami_lightning.callbacks.logging import Report, captions_markdown, dispatch
from pami_lightning.callbacks.pictures import GAP, draw_samples, timeline_columns
from pami_lightning.callbacks.report import Explained, build_report, caption_lines, table_rows
from pami_lightning.callbacks.samples import Sample

NAMES = ["cat", "astronaut", "dog"]


def _blob(size: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    bump = torch.exp(-((yy - 0.3) ** 2 + (xx - 0.6) ** 2) / 0.05)
    return (bump - bump.min()) / (bump.max() - bump.min())


def _explained(
    maps: torch.Tensor,
    labels: Optional[list[int]] = None,
    preds: Optional[list[int]] = None,
    targets: Optional[list[int]] = None,
    p_target: Optional[list[float]] = None,
    p_pred: Optional[list[float]] = None,
    masks: bool = True,
    per_sample: Optional[dict[str, list[float]]] = None,
) -> Explained:
    """Explanations of ``n`` grey images ``[n, 3, H, W]`` with the given maps ``[n, H, W]`` and numbers."""
    n, h, w = maps.shape
    mask = torch.zeros(n, h, w, dtype=torch.bool)
    mask[:, h // 4 : h // 2, w // 2 : 3 * w // 4] = True
    label_t = None if labels is None else torch.tensor(labels)
    preds_t = torch.tensor(preds if preds is not None else labels if labels is not None else [0] * n)
    return Explained(
        sample=Sample(torch.full((n, 3, h, w), 0.5), label_t, mask if masks else None),
        maps=maps.float(),
        preds=preds_t,
        targets=torch.tensor(targets) if targets is not None else (label_t if label_t is not None else preds_t),
        p_target=torch.tensor(p_target if p_target is not None else [0.5] * n),
        p_pred=torch.tensor(p_pred if p_pred is not None else [0.5] * n),
        scores={},
        per_sample={k: torch.tensor(v) for k, v in (per_sample or {}).items()},
    )


def _report(result: Explained, pictures: Pictures, history: Optional[DriftHistory] = None, step: int = 40, epoch: int = 3, validation: int = 4) -> tuple[Report, list[dict[str, Any]]]:
    indices = [10 + i for i in range(result.maps.shape[0])]
    rows = table_rows(indices, validation, epoch, result)
    history = history or DriftHistory()
    return build_report(step=step, prefix="pami", indices=indices, result=result, rows=rows, history=history, pictures=pictures), rows


def _overlay_tile(strip: np.ndarray) -> np.ndarray:
    """The overlay of a strip (input | overlay | colour bar), tiles are square."""
    side = strip.shape[0]
    return strip[:, side + GAP : 2 * side + GAP]


# ----------------------------------------------------------------------------------- options


@pytest.mark.parametrize(("kwargs", "match"), [({"min_size": 0}, "min_size"), ({"timeline_columns": 1}, "timeline_columns"),
                                               ({"scale": "log"}, "scale"), ({"max_images": 0}, "max_images")])
def test_pictures_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Pictures(**kwargs)


def test_class_names_in_captions_fall_back_to_indices():
    pictures = Pictures(class_names=NAMES)
    assert pictures.class_name(1) == "astronaut (1)" and pictures.class_name(1, index=False) == "astronaut"
    assert pictures.class_name(7) == "7" and Pictures().class_name(1) == "1" and pictures.class_name(None) == "?"


# ------------------------------------------------------------------------------- the pictures


@pytest.mark.parametrize(("size", "side"), [(32, 128), (64, 128), (100, 200), (224, 224)])
def test_small_images_are_enlarged_nearest_neighbour_and_photos_keep_their_size(size, side):
    result = _explained(torch.rand(2, size, size), labels=[0, 1])
    report, _ = _report(result, Pictures())
    for strip, card, mask in zip(report.strips, report.cards, report.strip_masks, strict=True):
        assert strip.shape[0] == side and card.shape[0] > side  # the caption over the strip
        assert mask is not None and mask.shape == strip.shape[:2]
    factor = side // size
    # Nearest: each map pixel is a factor x factor block of one colour.
    tile = _overlay_tile(report.strips[0])
    assert np.array_equal(tile, np.repeat(np.repeat(tile[::factor, ::factor], factor, 0), factor, 1))


def test_absolute_scale_gives_different_pixels_for_maps_of_different_range():
    blob = _blob(32)
    maps = torch.stack([0.980 + 0.015 * blob, 0.003 * blob])
    minmax, _ = _report(_explained(maps, labels=[0, 1]), Pictures(scale="minmax"))
    absolute, _ = _report(_explained(maps, labels=[0, 1]), Pictures(scale="absolute"))
    assert np.array_equal(_overlay_tile(minmax.strips[0]), _overlay_tile(minmax.strips[1]))
    a, b = _overlay_tile(absolute.strips[0]), _overlay_tile(absolute.strips[1])
    assert not np.array_equal(a, b)
    # The astronaut's map is blue everywhere (p < 0.003), the cat's red everywhere (p > 0.98).
    assert a[..., 0].mean() > a[..., 2].mean() + 40 and b[..., 2].mean() > b[..., 0].mean() + 40
    # The colour bars say so: min-max bars are labelled with each map's own range, absolute ones 0..1.
    assert not np.array_equal(minmax.strips[0][:, -30:], minmax.strips[1][:, -30:])
    bar_width = 10
    jet = matplotlib.colormaps["jet"]
    bar = absolute.strips[1][:, 2 * (128 + GAP) : 2 * (128 + GAP) + bar_width]
    assert np.array_equal(bar[0, 0], jet(1.0, bytes=True)[:3]) and np.array_equal(bar[120, 0], jet(1 - 120 / 127, bytes=True)[:3])
    assert (bar[-2:] == 0).all()  # the map's range (0..0.003) marked at the bottom of the 0..1 bar


def test_the_objects_outline_is_drawn_on_the_card_and_the_mask_aligned_with_the_strip():
    result = _explained(torch.rand(1, 32, 32), labels=[0])
    card, strip, mask = draw_samples(result.sample.images, result.maps, [["#1"]], Pictures(), result.sample.masks)[0]
    big = np.repeat(np.repeat(result.sample.masks[0].numpy(), 4, 0), 4, 1)
    assert np.array_equal(mask[:, :128].astype(bool), big) and np.array_equal(mask[:, 128 + GAP : 256 + GAP].astype(bool), big)
    assert mask[:, 256 + GAP :].sum() == 0  # nothing under the colour bar
    inputs = card[-128:, :128]
    assert (inputs[big] == 255).any() and (strip[:, :128][big] != 255).all()  # white outline on the card only


# ---------------------------------------------------------------------------------- captions


def test_captions_hold_the_label_the_prediction_both_scores_the_step_and_the_maps_range():
    maps = torch.stack([0.980 + 0.015 * _blob(16), 0.003 * _blob(16)])
    result = _explained(maps, labels=[0, 1], preds=[0, 2], p_target=[0.91, 0.27], p_pred=[0.91, 0.64],
                        per_sample={"pointing_game": [1.0, 0.0], "energy_pointing_game": [0.42, math.nan], "insertion": [0.81, 0.33], "deletion": [0.12, 0.2]})
    report, rows = _report(result, Pictures(class_names=NAMES), step=120, epoch=3)
    assert report.captions[0] == (
        "#10 · epoch 3 · step 120 · label cat (0) p(label) 0.910 · pred cat (0) p(pred) 0.910 · "
        "map of p(cat): min 0.980 · max 0.995 · scale min-max · hit · energy 0.420 · insertion 0.810 · deletion 0.120"
    )
    # The astronaut was not predicted: p(label) is the explained class's score, p(pred) the dog's;
    # a NaN energy (not counted) is left out.
    assert report.captions[1] == (
        "#11 · epoch 3 · step 120 · label astronaut (1) p(label) 0.270 · pred dog (2) p(pred) 0.640 · "
        "map of p(astronaut): min 0.000 · max 0.003 · scale min-max · miss · insertion 0.330 · deletion 0.200"
    )
    assert rows[1]["map_min"] == 0.0 and rows[1]["map_max"] == pytest.approx(0.003)
    assert [r["caption"] for r in report.samples] == report.captions
    assert report.samples[1]["label_name"] == "astronaut (1)" and report.samples[1]["prediction_name"] == "dog (2)"


def test_caption_when_the_prediction_is_explained_and_the_label_was_not_scored():
    result = _explained(torch.full((1, 8, 8), 0.25), labels=[1], preds=[2], targets=[2], p_target=[0.7], p_pred=[0.7], masks=False)
    (row,) = table_rows([5], 1, 0, result)
    assert math.isnan(row["p_label"]) and row["target"] == 2
    lines = caption_lines(row, 7, Pictures(scale="absolute"))
    assert lines[1] == "label 1 · pred 2 p(pred) 0.700"  # p(label) unknown: not printed
    assert lines[2] == "map of p(2): min 0.250 · max 0.250 (flat) · scale absolute 0..1"
    # Given by the callback, p(label) is shown.
    result.p_label = torch.tensor([0.05])
    assert "p(label) 0.050" in caption_lines(table_rows([5], 1, 0, result)[0], 7, Pictures())[1]


def test_outputs_without_classes_caption_an_unknown_prediction_not_the_label():
    # ModelCall.clean reports pred -1 and p(pred) NaN when the outputs rank no classes.
    result = _explained(torch.full((1, 8, 8), 0.25), labels=[1], preds=[-1], targets=[1], p_target=[0.7], p_pred=[math.nan], masks=False)
    (row,) = table_rows([5], 1, 0, result)
    assert row["prediction"] is None and row["p_label"] == pytest.approx(0.7)  # the label was explained: its score is known
    assert caption_lines(row, 7, Pictures(class_names=NAMES))[1] == "label astronaut (1) p(label) 0.700 · pred ?"


def test_samples_without_labels_caption_the_prediction_only():
    result = _explained(torch.rand(1, 8, 8), labels=None, preds=[1], p_pred=[0.6], masks=False)
    report, rows = _report(result, Pictures())
    assert rows[0]["label"] is None and report.captions[0].split(" · ")[3] == "pred 1 p(pred) 0.600"
    assert report.strip_masks == [None]


# ---------------------------------------------------------------------------------- timeline


def _history(values: list[list[float]], pictures: Pictures) -> tuple[Report, Any]:
    """Validations of constant maps: ``values[t][i]`` is sample i's score at validation t (the last one is reported)."""
    history = DriftHistory()
    indices = list(range(len(values[0])))
    for t, column in enumerate(values[:-1]):
        result = _explained(torch.tensor(column).view(-1, 1, 1).expand(-1, 16, 16).clone(), labels=[0] * len(column))
        history.push(indices, result.maps, t + 1, table_rows(indices, t + 1, t, result))
    last = _explained(torch.tensor(values[-1]).view(-1, 1, 1).expand(-1, 16, 16).clone(), labels=[0] * len(values[-1]))
    rows = table_rows(indices, len(values), len(values) - 1, last)
    return build_report(step=9, prefix="pami", indices=indices, result=last, rows=rows, history=history, pictures=pictures), last


def _cell_colour(value: float, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """The colour of a cell of a constant map ``value`` over the grey 0.5 image."""
    colour = matplotlib.colormaps[cmap](value, bytes=True)[:3]
    return np.round((1 - alpha) * 0.5 * 255 + alpha * np.asarray(colour, np.float64)).astype(np.uint8)


def _has_cell(picture: np.ndarray, colour: np.ndarray, side: int = 128) -> bool:
    """Whether ``picture`` holds a ``side x side`` cell's worth of ``colour`` (to one level of rounding)."""
    return int((np.abs(picture.astype(int) - colour.astype(int)) <= 1).all(-1).sum()) >= side * side


def test_absolute_timeline_colours_each_cell_by_its_own_probability():
    # Sample 0 drifts 0.1 -> 0.5 -> 0.9 -> 0.5; sample 1 stays at 0.3.
    report, _ = _history([[0.1, 0.3], [0.5, 0.3], [0.9, 0.3], [0.5, 0.3]], Pictures(scale="absolute"))
    for value in (0.1, 0.5, 0.9, 0.3):
        assert _has_cell(report.timeline, _cell_colour(value)), value
    # Min-max: a constant map has no range to stretch; every cell gets the colour map's first colour.
    minmax, _ = _history([[0.1, 0.3], [0.5, 0.3], [0.9, 0.3], [0.5, 0.3]], Pictures(scale="minmax"))
    assert not _has_cell(minmax.timeline, _cell_colour(0.9)) and _has_cell(minmax.timeline, _cell_colour(0.0), side=128 * 2)


def test_timeline_shows_at_most_timeline_columns_evenly_spaced_labelled_by_epoch(monkeypatch):
    seen: dict[str, Any] = {}
    draw = report_module.draw_timeline

    def spy(images, thumbs, ranges, column_labels, row_labels, pictures):
        seen.update(columns=list(column_labels), rows=[list(r) for r in row_labels], ranges=ranges.clone())
        return draw(images, thumbs, ranges, column_labels, row_labels, pictures)

    monkeypatch.setattr(report_module, "draw_timeline", spy)
    values = [[0.1 * t] for t in range(6)]  # one sample, 6 validations: 0.0 .. 0.5
    report, _ = _history(values, Pictures(scale="absolute", timeline_columns=3, class_names=NAMES))
    assert seen["columns"] == [f"epoch {t}" for t in range(6)] and seen["rows"] == [["#0", "cat (0)"]]
    assert seen["ranges"][0, :, 0].tolist() == pytest.approx([0.1 * t for t in range(6)])
    assert timeline_columns(6, 3) == [0, 2, 5]
    for t in range(6):
        assert _has_cell(report.timeline, _cell_colour(0.1 * t)) == (t in (0, 2, 5)), t
    # Input column + 3 map columns + the colour bar; a caption over them.
    assert report.timeline.shape[1] > 4 * (128 + GAP) and report.timeline.shape[0] > 128


def test_timeline_of_a_history_without_ranges_says_so_instead_of_guessing(monkeypatch):
    seen: dict[str, Any] = {}

    def spy(images, thumbs, ranges, *args):
        seen["ranges"] = ranges
        return np.zeros((1, 1, 3), np.uint8)

    monkeypatch.setattr(report_module, "draw_timeline", spy)
    history = DriftHistory()
    result = _explained(torch.rand(1, 8, 8), labels=[0])
    old = table_rows([0], 1, 0, result)
    for row in old:  # a checkpoint of an older version: no map_min / map_max in its rows
        del row["map_min"], row["map_max"]
    history.push([0], result.maps, 1, old)
    build_report(step=3, prefix="pami", indices=[0], result=result, rows=table_rows([0], 2, 1, result), history=history, pictures=Pictures())
    assert seen["ranges"][0, 0].isnan().all() and not seen["ranges"][0, 1].isnan().any()


# ---------------------------------------------------------------------------------- text samples


def test_text_samples_get_their_caption_over_the_highlighted_tokens():
    ids = torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]])
    inputs = {"input_ids": ids, "attention_mask": (ids > 0).long()}
    maps = torch.tensor([[0.1, 0.9, 0.2, 0.0], [0.4, 0.5, 0.0, 0.0]])
    result = Explained(Sample(inputs, torch.tensor([1, 0])), maps, torch.tensor([1, 0]), torch.tensor([1, 0]),  # type: ignore[arg-type]
                       torch.tensor([0.8, 0.6]), torch.tensor([0.8, 0.6]), {}, {})
    rows = table_rows([0, 1], 1, 0, result)
    assert (rows[0]["map_min"], rows[0]["map_max"]) == pytest.approx((0.1, 0.9))  # the padding's 0 is no score
    report = build_report(step=2, prefix="pami", indices=[0, 1], result=result, rows=rows, history=DriftHistory(), pictures=Pictures(), text=True)
    assert [c.shape[1] for c in report.cards] == [640, 640] and report.strips == [] and report.timeline is None
    assert report.token_html is not None and report.token_html[0].count("<span") == 3


# ------------------------------------------------------------------------- read back from loggers


class _FileLogger:
    """What dispatch needs of a CSVLogger-like logger: a log_dir."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir


def test_files_get_lossless_pngs_a_captions_csv_and_the_table(tmp_path):
    result = _explained(torch.stack([0.98 + 0.015 * _blob(32), 0.003 * _blob(32)]), labels=[0, 1], preds=[0, 2],
                        p_target=[0.91, 0.27], p_pred=[0.91, 0.64], per_sample={"insertion": [0.8, 0.3]})
    report, rows = _report(result, Pictures(class_names=NAMES, scale="absolute"), step=12)
    dispatch([_FileLogger(str(tmp_path))], report)  # type: ignore[list-item]
    folder = tmp_path / "pami" / "step_000012"
    assert sorted(os.listdir(folder)) == ["captions.csv", "maps.npz", "overlays.png", "sample_10.png", "sample_11.png", "timeline.png"]
    for name, picture in report.pictures():
        assert np.array_equal(np.asarray(Image.open(folder / f"{name}.png")), picture), name
    with open(folder / "captions.csv", newline="", encoding="utf-8") as f:
        saved = list(csv.DictReader(f))
    assert [r["caption"] for r in saved] == report.captions
    assert [float(r["p_pred"]) for r in saved] == pytest.approx([0.91, 0.64]) and [float(r["p_label"]) for r in saved] == pytest.approx([0.91, 0.27])
    assert [float(r["map_max"]) for r in saved] == pytest.approx([0.995, 0.003], abs=1e-6)
    assert [r["prediction_name"] for r in saved] == ["cat (0)", "dog (2)"] and {r["scale"] for r in saved} == {"absolute"}
    assert [float(r["insertion"]) for r in saved] == pytest.approx([0.8, 0.3]) and {r["step"] for r in saved} == {"12"}
    with open(tmp_path / "pami" / "table.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and table[0]["label_name"] == "cat (0)"


def test_tensorboard_gets_the_cards_and_a_captions_text_at_the_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _explained(torch.rand(2, 32, 32), labels=[0, 1], p_target=[0.7, 0.2], p_pred=[0.7, 0.5], preds=[0, 0])
    report, _ = _report(result, Pictures(class_names=NAMES), step=30)
    logger = TensorBoardLogger(tmp_path, name="tb")
    dispatch([logger], report)
    logger.experiment.flush()
    ea = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0})
    ea.Reload()
    assert set(ea.Tags()["images"]) == {"pami/overlays", "pami/timeline", "pami/sample_10", "pami/sample_11"}
    for name, picture in report.pictures():
        (event,) = ea.Images(f"pami/{name}")
        assert event.step == 30 and (event.height, event.width) == picture.shape[:2]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(event.encoded_image_string))), picture), name
    (text,) = ea.Tensors("pami/captions/text_summary")
    markdown = text.tensor_proto.string_val[0].decode()
    assert text.step == 30 and markdown == captions_markdown(report)
    assert "| 11 | #11 · epoch 3 · step 30 · label astronaut (1) p(label) 0.200 · pred cat (0) p(pred) 0.500" in markdown


def test_only_max_images_are_drawn_but_every_sample_is_captioned_and_followed(monkeypatch):
    seen: dict[str, Any] = {}
    draw = report_module.draw_timeline

    def spy(images, thumbs, ranges, column_labels, row_labels, pictures):
        seen.update(thumbs=thumbs.shape, ranges=ranges.clone(), rows=row_labels)
        return draw(images, thumbs, ranges, column_labels, row_labels, pictures)

    monkeypatch.setattr(report_module, "draw_timeline", spy)
    history = DriftHistory()
    indices = [4, 8, 12]
    for t in range(3):  # maps of sample i at validation t span t/10 .. t/10 + (i + 1)/10
        maps = torch.stack([t / 10 + (i + 1) / 10 * _blob(16) for i in range(3)])
        result = _explained(maps, labels=[0, 1, 2])
        rows = table_rows(indices, t + 1, t, result)
        if t < 2:
            history.push(indices, result.maps, t + 1, rows)
    report = build_report(step=5, prefix="pami", indices=indices, result=result, rows=rows, history=history, pictures=Pictures(max_images=2))
    assert report.names == ["sample_4", "sample_8"] and len(report.cards) == 2 and len(report.samples) == 3
    assert seen["thumbs"][:2] == (2, 3) and [r[0] for r in seen["rows"]] == ["#4", "#8"]
    # Each drawn sample's own range at each validation, read from the history's rows.
    want = torch.tensor([[[t / 10, t / 10 + (i + 1) / 10] for t in range(3)] for i in range(2)])
    assert torch.allclose(seen["ranges"], want, atol=1e-6)


def test_grey_and_oblong_images_are_drawn_in_colour_at_a_readable_size():
    result = _explained(torch.rand(2, 24, 48), labels=[0, 1])
    result.sample.images = torch.rand(2, 1, 24, 48)
    report, _ = _report(result, Pictures())
    strip = report.strips[0]
    assert strip.shape[0] == 24 * 3 and strip.shape[2] == 3  # the longer side 48 -> 144 px
    assert report.grid is not None and report.timeline is not None


def _seven_pictures() -> Report:
    rng = np.random.default_rng(0)
    cards = [rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8) for i in range(5)]
    return Report(step=3, prefix="pami", names=[f"sample_{i}" for i in range(5)], captions=[""] * 5, cards=cards,
                  grid=np.concatenate(cards, axis=0), timeline=rng.integers(0, 256, (30, 90, 3), dtype=np.uint8))


@pytest.mark.parametrize("workers", [4, 1])
def test_pictures_encoded_in_parallel_are_the_pngs_of_each_picture(workers: int):
    report, serial = _seven_pictures(), _seven_pictures()
    assert report.encode_pictures(workers=workers) == 7 and report.encode_pictures(workers=workers) == 0  # each once
    for name, image in report.pictures():
        png = report.png(name, image)
        assert png == serial.png(name, image)  # bit for bit what one-by-one encoding gives
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), image)


def test_dispatch_encodes_the_pngs_only_for_loggers_that_take_them(tmp_path: Any):
    from lightning.pytorch.loggers import CSVLogger

    files, none = _seven_pictures(), _seven_pictures()
    dispatch([CSVLogger(tmp_path)], files)
    assert files.encode_pictures(workers=4) == 0  # all encoded, and written
    assert len(list((tmp_path / "lightning_logs" / "version_0" / "pami" / "step_000003").glob("*.png"))) == 7
    dispatch([], none)
    assert none.encode_pictures(workers=4) == 7  # no logger: nothing was encoded
