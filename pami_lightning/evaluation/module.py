"""``ExplanationModule``: a LightningModule whose ``predict_step`` explains a batch with every method and scores each map.

Run it with ``Trainer.predict`` on any strategy (``ddp`` over devices and nodes included): each rank
explains its shard; an :class:`~pami_lightning.evaluation.ExplanationWriter` stores what
``predict_step`` returns; the aggregates are torchmetrics sum states synced at the end.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn

from ..explainer import PAMI
from ..forward import Clean, ModelCall
from ..maskers import Blur, Constant, Masker, as_masker
from ..metrics.functional import curve_auc, deletion_curves, insertion_curves, pointing_game
from .aggregate import MethodScores
from .explainers import Explainer, ExplainerLike, as_explainer
from .layout import FORMAT

__all__ = ["ExplanationModule", "ExplainedBatch", "MethodOutput", "METRICS"]

MetricName = Literal["pointing_game", "insertion", "deletion"]
#: The scores an evaluation computes by default, each per sample and per class.
METRICS: tuple[MetricName, ...] = ("pointing_game", "insertion", "deletion")
Tolerance = Union[float, Literal["relative"]]


@dataclass
class MethodOutput:
    """One method on the explained samples of a batch (``n`` of them, in batch order), on the CPU."""

    maps: Tensor  #: float32 [n, H, W]
    seconds: float  #: the explainer's wall time per image
    passes: Tensor | None = None  #: float64 [n] forward passes per image, None when unknown
    pointing_hit: Tensor | None = None  #: float32 [n]: 1 hit, 0 miss, NaN without mask
    insertion_auc: Tensor | None = None  #: float32 [n]
    deletion_auc: Tensor | None = None  #: float32 [n]
    insertion_curve: Tensor | None = None  #: float32 [n, n_steps + 1]
    deletion_curve: Tensor | None = None  #: float32 [n, n_steps + 1]


@dataclass
class ExplainedBatch:
    """What ``predict_step`` returns: the batch's new samples (``B``) and each method's output on the explained ones."""

    index: list[int]
    id: list[str]
    label: list[int]
    class_name: list[str]
    prediction: list[int]
    p_label: list[float]
    correct: list[bool]
    explained: list[bool]
    methods: dict[str, MethodOutput] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    def rows(self) -> list[dict[str, Any]]:
        """Table rows (method-major, batch order) keyed by :data:`~pami_lightning.evaluation.layout.COLUMNS`; ``row`` counts explained samples."""
        rows = []
        for method, out in self.methods.items():
            k = 0
            for i in range(len(self)):
                row: dict[str, Any] = {
                    "method": method, "index": self.index[i], "id": self.id[i], "label": self.label[i], "class_name": self.class_name[i],
                    "prediction": self.prediction[i], "p_label": self.p_label[i], "correct": self.correct[i], "explained": self.explained[i],
                }
                if self.explained[i]:
                    row["row"] = k
                    row["seconds"] = out.seconds
                    for key in ("passes", "pointing_hit", "insertion_auc", "deletion_auc"):
                        value = getattr(out, key)
                        row[key] = None if value is None else float(value[k])
                    k += 1
                rows.append(row)
        return rows


def _describe(obj: object) -> str:
    """A repr without memory addresses, stable from one run to the next (run.json compares them on resume)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


class ExplanationModule(pl.LightningModule):
    """Explain and score a dataset with several methods, through ``Trainer.predict``.

    For each batch (items of :mod:`pami_lightning.data`, batched by ``collate``: ``image [B, 3, H, W]``,
    ``label [B]``, ``index [B]``, optional ``mask [B, H, W]``, ``id``, ``class_name``), the clean
    images are run once (prediction, p(label)), then every explainer explains the ground-truth
    label (the paper's protocol) and each map is scored per image:

    - pointing game: TorchRay's semantics on the item's mask (first maximum; hit within
      ``tolerance``; ``"relative"`` = 15/224 of the image's smaller side, TorchRay's 15 px at 224);
      flat maps miss; no mask: not counted;
    - insertion: RISE's curve from ``insertion_substrate`` (default the paper's ``Blur(49, 100)``)
      to the image, ``n_steps`` steps, AUC by the trapezoid rule;
    - deletion: from the image to ``deletion_substrate`` (default RISE's ``Constant(0.0)``).

    Curves score the label's probability and reuse the clean pass. Aggregates are per-class sum
    states (:class:`~pami_lightning.evaluation.aggregate.MethodScores`) synced across ranks at the
    end of the epoch into :attr:`scores`.

    Args:
        model: the ``nn.Module`` explained, or a :class:`~pami_lightning.ModelCall` (preprocess,
            output, autocast, batch size of the curves). Its modules become submodules, so Lightning
            moves them to the device; explainers must use the same model object.
        explainers: ``{name: explainer}`` or a sequence (named by each explainer's ``name``): PAMI
            instances, :class:`~pami_lightning.evaluation.Explainer` s, or callables ``(images, target) -> maps``.
        metrics: any of ``"pointing_game"``, ``"insertion"``, ``"deletion"`` (default all three).
        tolerance: the pointing game's hit radius: pixels, or ``"relative"`` (default).
        n_steps: steps of the insertion / deletion curves (default 224: RISE's step count on 224x224
            images; the curves have ``n_steps + 1`` points whatever the image size).
        insertion_substrate: default ``Blur(49, 100)``, the paper's.
        deletion_substrate: default ``Constant(0.0)``, RISE's.
        only_correct: explain only images the model classifies correctly, as the authors' scripts
            do (default False: every image). Skipped images stay in the table with ``explained = 0``.
        num_classes: the classes of the per-class averages (default: ``len(classes)`` of the
            datamodule's dataset).
    """

    def __init__(
        self,
        model: nn.Module | ModelCall,
        explainers: Mapping[str, ExplainerLike] | Sequence[ExplainerLike],
        *,
        metrics: Sequence[MetricName] = METRICS,
        tolerance: Tolerance = "relative",
        n_steps: int = 224,
        insertion_substrate: Masker | None = None,
        deletion_substrate: Masker | None = None,
        only_correct: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.model_call = model if isinstance(model, ModelCall) else ModelCall(model)
        # Registered, so that the strategy moves them to the rank's device.
        self.models = nn.ModuleList(self.model_call.modules)
        self.explainers = self._explainers(explainers)
        bad = [m for m in metrics if m not in METRICS]
        if bad or not metrics:
            raise ValueError(f"metrics must be a non-empty subset of {list(METRICS)}; got {list(metrics)}")
        self.metrics = tuple(m for m in METRICS if m in metrics)
        if tolerance != "relative" and (isinstance(tolerance, (bool, str)) or not float(tolerance) >= 0):
            raise ValueError(f'tolerance must be pixels >= 0 or "relative" (15/224 of the image\'s smaller side); got {tolerance!r}')
        self.tolerance = tolerance
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be an int >= 1; got {n_steps!r}")
        self.n_steps = n_steps
        self.insertion_substrate = as_masker(insertion_substrate if insertion_substrate is not None else Blur(49, 100))
        self.deletion_substrate = as_masker(deletion_substrate if deletion_substrate is not None else Constant(0.0))
        self.only_correct = bool(only_correct)
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be None or an int >= 1; got {num_classes!r}")
        self.num_classes = num_classes
        self.scores: dict[str, dict[str, Any]] = {}  #: aggregates per method, after a predict run
        self._scores: dict[str, MethodScores] = {}
        self._done: set[int] = set()
        self._seen: set[int] = set()

    @staticmethod
    def _explainers(explainers: Mapping[str, ExplainerLike] | Sequence[ExplainerLike]) -> dict[str, Explainer]:
        if isinstance(explainers, (PAMI, str)) or callable(explainers):
            raise TypeError("explainers must be a mapping {name: explainer} or a list of explainers, not a single one")
        items = list(explainers.items()) if isinstance(explainers, Mapping) else [(None, e) for e in explainers]
        out: dict[str, Explainer] = {}
        for name, e in items:
            explainer = as_explainer(e, name)
            if explainer.name in out:
                raise ValueError(f"two explainers are named {explainer.name!r}: give them distinct names ({{name: explainer}})")
            out[explainer.name] = explainer
        if not out:
            raise ValueError("explainers is empty: give at least one method to explain with")
        return out

    # ------------------------------------------------------------------ settings

    def resolved_num_classes(self) -> int:
        """``num_classes``, or the number of classes of the datamodule's dataset."""
        if self.num_classes is not None:
            return self.num_classes
        classes = getattr(getattr(self._trainer, "datamodule", None), "classes", None)
        if classes:
            return len(classes)
        raise ValueError("the per-class averages need the number of classes: pass ExplanationModule(num_classes=K), "
                         "or the data as EvaluationData(dataset) of a dataset with .classes")

    def config(self) -> dict[str, Any]:
        """The settings that define the results (``run.json``): a resumed run must have the same."""
        return {
            "format": FORMAT,
            "methods": list(self.explainers),
            "explainers": {name: _describe(e) for name, e in self.explainers.items()},
            "metrics": list(self.metrics),
            "target": "label",
            "only_correct": self.only_correct,
            "tolerance": self.tolerance,
            "n_steps": self.n_steps,
            "insertion_substrate": _describe(self.insertion_substrate),
            "deletion_substrate": _describe(self.deletion_substrate),
            "num_classes": self.resolved_num_classes(),
            "model": type(self.model_call.model).__qualname__,
            # The weights too: a resume with a retrained model would otherwise keep the old model's maps.
            "weights": weights_digest(self.model_call),
            "output": self.model_call.output if isinstance(self.model_call.output, str) else _describe(self.model_call.output),
        }

    def skip(self, indices: Sequence[int]) -> None:
        """Dataset indices already written: ``predict_step`` leaves them out (a resumed run over the full dataset)."""
        self._done = {int(i) for i in indices}

    def restore(self, sums: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Add the sums of samples written by earlier runs to the metric states (call on one rank only)."""
        for method, s in sums.items():
            if method in self._scores:
                self._scores[method].add_sums(s)

    # ------------------------------------------------------------------ hooks

    def setup(self, stage: str) -> None:
        if stage == "predict":
            k = self.resolved_num_classes()
            self._scores = {name: MethodScores(k, self.n_steps + 1, self.metrics) for name in self.explainers}
            self._seen = set()
            self.scores = {}

    def on_predict_start(self) -> None:
        # The metrics are not submodules (method names may hold dots): move them here.
        for m in self._scores.values():
            m.to(self.device)

    def on_predict_epoch_end(self) -> None:
        # Every rank runs this (EvaluationData gives each rank at least one batch): the sync is a collective.
        self.scores = {name: m.synced() for name, m in self._scores.items()}

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> ExplainedBatch:
        images, labels, index = _unpack(batch)
        idx = index.tolist()
        # Padding (index -1), samples written by an earlier run, and repeats of a padding sampler are left out.
        keep = [i for i, k in enumerate(idx) if k >= 0 and k not in self._done and k not in self._seen]
        self._seen.update(idx[i] for i in keep)
        n = len(images)
        ids = _strings(batch.get("id"), n, [str(k) for k in idx])
        names = _strings(batch.get("class_name"), n, [str(int(t)) for t in labels.tolist()])
        rows = torch.tensor(keep, dtype=torch.long)
        index = index[rows]
        rows = rows.to(images.device)
        images, labels = images[rows], labels[rows]
        mask = batch.get("mask")
        masks = mask[rows] if isinstance(mask, Tensor) else None
        clean = self.model_call.clean(images, labels)
        if self.only_correct and bool((clean.pred < 0).any()):
            raise ValueError("only_correct=True keeps the images the model classifies correctly, but its outputs have no classes to rank "
                             "(a callable output= over non-tensor outputs): pass only_correct=False, or an output= the model's top-1 "
                             "class can be read from")
        correct = clean.pred == labels
        explained = correct if self.only_correct else torch.ones_like(correct)
        out = ExplainedBatch(
            index=[idx[i] for i in keep], id=[ids[i] for i in keep], label=labels.tolist(), class_name=[names[i] for i in keep],
            prediction=clean.pred.tolist(), p_label=clean.score.tolist(), correct=correct.tolist(), explained=explained.tolist(),
        )
        e = explained.nonzero().flatten()
        if e.numel():
            sub = Clean(*(t[e] for t in clean))
            for name, explainer in self.explainers.items():
                out.methods[name] = self._score(name, explainer, images[e], labels[e], index[e.cpu()], None if masks is None else masks[e], sub)
        else:
            out.methods = {name: MethodOutput(maps=torch.zeros(0, *images.shape[-2:]), seconds=float("nan")) for name in self.explainers}
        return out

    def _score(self, name: str, explainer: Explainer, x: Tensor, t: Tensor, index: Tensor, masks: Tensor | None, clean: Clean) -> MethodOutput:
        """Explain ``x`` for ``t`` with one method and score its maps per image."""
        _sync(x.device)
        start = time.perf_counter()
        # A copy per method: one that edits its input in place cannot change what the next one sees.
        images = x.clone()
        maps = explainer(images, t, index=index) if getattr(explainer, "needs_index", False) else explainer(images, t)  # type: ignore[call-arg]
        _sync(x.device)
        seconds = (time.perf_counter() - start) / x.shape[0]
        maps = _check_maps(name, maps, x)
        passes = getattr(explainer, "passes", None)
        out = MethodOutput(maps=maps.cpu(), seconds=seconds, passes=_passes(name, passes(x), x.shape[0]) if callable(passes) else None)
        update: dict[str, Tensor] = {}
        if "pointing_game" in self.metrics and masks is not None:
            hit = pointing_game(maps, masks.bool(), tolerance=self.tolerance, reduction="none")
            out.pointing_hit = update["hit"] = hit.cpu()
        for kind, fn, substrate in (("insertion", insertion_curves, self.insertion_substrate), ("deletion", deletion_curves, self.deletion_substrate)):
            if kind in self.metrics:
                curves = fn(self.model_call, x, maps, t, n_steps=self.n_steps, substrate=substrate, clean=clean).cpu()
                auc = curve_auc(curves)
                setattr(out, f"{kind}_curve", curves)
                setattr(out, f"{kind}_auc", auc)
                update[kind], update[f"{kind}_curve"] = auc, curves
        self._scores[name].update(t, **update)
        return out


def _unpack(batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    if not isinstance(batch, Mapping) or not all(k in batch for k in ("image", "label", "index")):
        got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"ExplanationModule needs batches of pami_lightning.data items (a dict with image, label, index; collate_fn=collate); got {got}")
    images, labels, index = batch["image"], batch["label"], batch["index"]
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"batch['image'] must be float images [B, 3, H, W] in [0, 1]; got {getattr(images, 'shape', type(images).__name__)}")
    return images, torch.as_tensor(labels, device=images.device).long(), torch.as_tensor(index).long().cpu()


def _strings(values: Any, n: int, default: list[str]) -> list[str]:
    return [str(v) for v in values] if isinstance(values, (list, tuple)) and len(values) == n else default


def _check_maps(name: str, maps: Any, x: Tensor) -> Tensor:
    if not isinstance(maps, Tensor) or maps.ndim != 3 or maps.shape[0] != x.shape[0]:
        got = list(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"explainer {name!r} returned {got} for {x.shape[0]} images; it must return maps [B, H, W]")
    maps = maps.detach().to(x.device, torch.float32)
    if not bool(torch.isfinite(maps).all()):
        raise ValueError(f"explainer {name!r} returned maps with NaN or inf values; fix the method (or wrap it with torch.nan_to_num)")
    return maps


def _passes(name: str, value: Any, n: int) -> Tensor | None:
    if value is None:
        return None
    p = torch.as_tensor(value, dtype=torch.float64).cpu()
    if p.ndim == 0:
        p = p.expand(n)
    if p.shape != (n,):
        raise ValueError(f"explainer {name!r}: passes(images) must be an int or [B] = [{n}] per image; got shape {list(p.shape)}")
    return p.clone()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def weights_digest(call: ModelCall) -> str:
    """SHA-256 of the parameters and buffers of the call's modules (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for module in call.modules:
        for name, tensor in module.state_dict().items():
            t = tensor.detach().reshape(-1).cpu()
            digest.update(f"{name}:{t.dtype}:{list(tensor.shape)};".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]
