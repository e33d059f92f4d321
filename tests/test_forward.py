"""ModelCall, the one owner of how the model is called: copies, grad mode, autocast, dict inputs, eval
mode, the plain-callable warning, replace() and the batch-size check — each tested here once — then
the defects it fixes in PAMI and Insertion / Deletion, and the rule that nothing outside the engine
reaches into its private names."""

from __future__ import annotations

import ast
import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

import pami_lightning
from pami_lightning import PAMI, Blur, Constant, ModelCall, SlidingWindow
from pami_lightning.metrics import Deletion, Insertion
from pami_lightning.metrics.functional import deletion_curves, insertion_curves

from helpers.images import MEAN, STD, normalize, random_images
from helpers.models import make_cnn

PLAIN = r"is a plain callable, so its modules cannot be put in eval mode.*forward=lambda m, x: \.\.\..*modules=\(\)"


class Probe(nn.Module):
    """A linear classifier of ``[N, 3, 2, 2]`` inputs that records, at each call, what it saw."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(12, num_classes)
        self.seen: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append({"training": self.training, "inference": torch.is_inference_mode_enabled(), "grad": torch.is_grad_enabled()})
        self.cache = torch.ones(len(x), 1)  # what RNN states and mask caches do: kept after the call
        return self.linear(x.flatten(1))


class Recorder(nn.Module):
    """Passes its input through; records its training flag and the grad mode at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_inference_mode_enabled()))
        return x


def bn_dropout_model() -> nn.Sequential:
    """In train mode, BatchNorm overwrites its running statistics and Dropout(0.9) makes every call differ."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), Recorder(), nn.ReLU(), nn.Dropout(0.9), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).train()


def run_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


#: The ways a module reaches ModelCall (and PAMI / Insertion / Deletion, which take the same arguments).
FORMS = {
    "module": lambda m: {"model": m},
    "forward adapter": lambda m: {"model": m, "forward": lambda module, x: module(x)},
    "bound method": lambda m: {"model": m.forward},
    "partial of a function": lambda m: {"model": functools.partial(run_model, m)},
    "partial of the module": lambda m: {"model": functools.partial(m)},
}


def normalize_in_place(x: torch.Tensor) -> torch.Tensor:
    return x.sub_(MEAN).div_(STD)  # torchvision's Normalize(inplace=True) and the like


# ---------------------------------------------------------------------------------------- copies


def test_clean_runs_on_copies_so_an_in_place_preprocess_leaves_the_inputs_alone(cnn):
    x = random_images(5, 16, seed=15)
    before = x.clone()
    got = ModelCall(cnn, preprocess=normalize_in_place, batch_size=2).clean(x)  # chunks of 2, 2 and 1
    assert torch.equal(x, before)
    want = ModelCall(cnn, preprocess=normalize).clean(x)
    assert torch.equal(got.pred, want.pred) and torch.equal(got.target, want.pred)
    torch.testing.assert_close(got.score, want.score, atol=0, rtol=0)
    torch.testing.assert_close(got.pred_score, got.score, atol=0, rtol=0)  # no target given: the top-1 is scored


@pytest.mark.parametrize("user", ["PAMI", "insertion"])
def test_an_in_place_preprocess_changes_neither_the_inputs_nor_the_results(cnn, user):
    x = random_images(2, 16, seed=15)
    before = x.clone()
    heat = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0))

    def run(preprocess):
        if user == "PAMI":
            return PAMI(cnn, SlidingWindow(4, 4), Blur(11, 5), preprocess=preprocess).explain(x)
        return insertion_curves(cnn, x, heat, step=9, preprocess=preprocess)

    got = run(normalize_in_place)
    assert torch.equal(x, before)
    torch.testing.assert_close(got, run(normalize), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------- grad mode


@pytest.mark.parametrize("inference_mode", [True, False])
def test_the_grad_mode_seen_from_inside_the_model(inference_mode):
    model = Probe()
    call = ModelCall(model, inference_mode=inference_mode)
    with torch.enable_grad(), call.running():
        outputs = call(torch.rand(4, 3, 2, 2))
    assert model.seen == [{"training": False, "inference": inference_mode, "grad": False}]
    assert outputs.is_inference() is inference_mode and not outputs.requires_grad

    def loss() -> torch.Tensor:  # a training step that uses what the model kept from the call
        return (model.linear.weight.sum() * model.cache).sum()

    # Only what was made under no_grad can serve it (the callback's case inside fit).
    if inference_mode:
        with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
            loss().backward()
    else:
        loss().backward()
        assert model.linear.weight.grad is not None


# ---------------------------------------------------------------------------------------- autocast


def test_autocast_bfloat16_on_cpu_runs_the_forward_in_bfloat16_and_scores_in_float32():
    model, x = Probe(), torch.rand(4, 3, 2, 2)
    plain, half = ModelCall(model), ModelCall(model, autocast_dtype=torch.bfloat16)
    with half.running():
        outputs = half(x)
        assert outputs.dtype == torch.bfloat16 and plain(x).dtype == torch.float32
        assert half.score(outputs, outputs.argmax(1)).dtype == torch.float32
    assert half.clean(x).score.dtype == torch.float32


@pytest.mark.parametrize("user", ["PAMI", "Insertion", "Deletion"])
def test_autocast_reaches_pami_and_the_causal_metrics(cnn, user):
    x = random_images(2, 24, seed=11)

    def run(dtype):
        if user == "PAMI":
            return PAMI(cnn, SlidingWindow(5, 4), Blur(11, 5), preprocess=normalize, autocast_dtype=dtype).explain(x, target=[0, 1])
        metric = {"Insertion": Insertion, "Deletion": Deletion}[user](cnn, step=24, preprocess=normalize, autocast_dtype=dtype)
        metric.update(torch.rand(2, 24, 24, generator=torch.Generator().manual_seed(0)), images=x, target=[0, 1])
        return metric.curve()[1]

    full, half = run(None), run(torch.bfloat16)
    assert half.dtype == torch.float32
    assert 0 < (half - full).abs().max() < 0.05  # > 0: the forward passes really ran in bfloat16


# ---------------------------------------------------------------------------------------- dict inputs


class Keywords(nn.Module):
    """A token classifier called with keywords; records the keys it was given."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 3)
        self.keys: list[list[str]] = []

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        self.keys.append(sorted(inputs))
        return (self.embed(inputs["input_ids"]) * inputs["attention_mask"][..., None]).sum(1)


def tokens() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids > 0).long(), "word_ids": torch.arange(4).expand(2, 4),
            "offset_mapping": torch.zeros(2, 4, 2, dtype=torch.long), "special_tokens_mask": torch.zeros(2, 4, dtype=torch.long)}


def test_dict_inputs_are_passed_as_keywords_without_the_meta_keys():
    model, batch = Keywords(), tokens()
    call = ModelCall(model)
    with call.running():
        outputs = call(batch)
    assert model.keys == [["attention_mask", "input_ids"]]  # word_ids, offset_mapping, special_tokens_mask dropped
    assert torch.equal(call.clean(batch).pred, outputs.argmax(1))
    assert torch.equal(batch["input_ids"], tokens()["input_ids"])


def test_a_forward_adapter_picks_the_logits_for_dict_and_tensor_inputs():
    class Output(nn.Module):  # a Hugging Face-style model: keyword inputs, an object with .logits out
        def __init__(self) -> None:
            super().__init__()
            self.inner = Keywords()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(logits=self.inner(input_ids=input_ids, attention_mask=attention_mask))

    model, batch = Output(), tokens()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a module with an adapter is no plain callable
        call = ModelCall(model, forward=lambda m, **kw: m(**kw).logits)
    with call.running():
        assert torch.equal(call.clean(batch).pred, model.inner(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).argmax(1))
    pixels = ModelCall(model, forward=lambda m, x: m(input_ids=x, attention_mask=torch.ones_like(x)).logits)
    assert pixels.clean(batch["input_ids"]).pred.shape == (2,)


def test_clean_predictions_of_outputs_without_classes_are_unknown_not_the_target():
    # A callable score over an object: the target can be scored, but no top-1 class can be read off.
    model = ModelCall(lambda x: SimpleNamespace(p=x.flatten(1).sigmoid()), output=lambda out, t: out.p.gather(1, t[:, None])[:, 0], modules=())
    x, target = torch.rand(3, 1, 2, 2), torch.tensor([0, 3, 1])
    clean = model.clean(x, target)
    assert torch.equal(clean.target, target) and torch.equal(clean.pred, torch.full((3,), -1))
    torch.testing.assert_close(clean.score, x.flatten(1).sigmoid().gather(1, target[:, None])[:, 0])
    assert clean.pred_score.isnan().all()
    with pytest.raises(ValueError, match="target=None explains the top-1 class"):
        model.clean(x)


# ---------------------------------------------------------------------------------------- eval mode


@pytest.mark.parametrize("form", list(FORMS))
def test_the_module_of_each_model_form_is_found(form):
    model = bn_dropout_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call = ModelCall(**FORMS[form](model))
    assert call.modules == (model,)


def test_running_puts_the_modules_in_eval_and_restores_every_submodule_mode():
    model = bn_dropout_model()
    model[1].eval()  # e.g. a frozen BatchNorm the user keeps in eval while the rest trains
    extra = nn.Dropout().train()
    before = [m.training for m in model.modules()]
    call = ModelCall(lambda x: extra(model(x)), modules=[model, extra])
    call.clean(random_images(2, 8))
    assert model[2].seen == [(False, True)]
    assert [m.training for m in model.modules()] == before and extra.training
    with pytest.raises(KeyError), call.running():  # restored on errors too
        assert not model.training and not extra.training
        raise KeyError
    assert [m.training for m in model.modules()] == before and extra.training and not model[1].training


def test_a_bare_callable_warns_and_modules_empty_silences_it():
    with pytest.warns(UserWarning, match=PLAIN):
        call = ModelCall(lambda x: x * 2)
    assert call.modules == ()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pure = ModelCall(lambda x: x * 2, modules=())
        pure.replace(batch_size=2)  # the choice survives replace()


# ---------------------------------------------------------------------------------------- replace and errors


def test_replace_changes_only_what_it_names():
    model = Probe()
    call = ModelCall(model, preprocess=normalize, output="identity", batch_size=3, autocast_dtype=torch.bfloat16)
    other = call.replace(inference_mode=False)
    assert other is not call and call.inference_mode and not other.inference_mode
    assert (other.model, other.preprocess, other.output, other.batch_size, other.autocast_dtype, other.modules) == (
        model, normalize, "identity", 3, torch.bfloat16, (model,))
    new = Probe()
    assert call.replace(model=new).modules == (new,)  # a new model's modules are found again
    with pytest.raises(TypeError, match=r"unknown arguments \['batchsize'\]"):
        call.replace(batchsize=2)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"model": "resnet"}, TypeError, "model must be an nn.Module or a callable"),
        ({"model": ModelCall(nn.Identity())}, TypeError, r"already a ModelCall.*\.replace"),
        ({"model": nn.Identity(), "forward": 3}, TypeError, r"forward must be a callable forward\(model, x\)"),
        ({"model": nn.Identity(), "preprocess": "imagenet"}, TypeError, "preprocess must be a callable"),
        ({"model": nn.Identity(), "autocast_dtype": torch.float64}, ValueError, "autocast_dtype must be None, torch.bfloat16 or torch.float16"),
        ({"model": nn.Identity(), "batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"model": nn.Identity(), "modules": [lambda x: x]}, TypeError, "modules must be nn.Module"),
        ({"model": nn.Identity(), "output": "logits"}, ValueError, "output must be"),
    ],
)
def test_bad_arguments_say_what_to_pass(kwargs, error, match):
    with pytest.raises(error, match=match):
        ModelCall(**kwargs)


@pytest.mark.parametrize("user", [PAMI, Insertion, insertion_curves])
def test_a_ready_model_call_carries_its_own_settings(user):
    args = (random_images(1, 8), torch.rand(1, 8, 8)) if user is insertion_curves else ()
    with pytest.raises(ValueError, match=r"model is a ModelCall: set .*preprocess.* on it"):
        user(ModelCall(make_cnn()), *args, preprocess=normalize)


def test_the_causal_metrics_take_an_explainers_model_call():
    model, x, heat = make_cnn(), random_images(2, 12, seed=3), torch.rand(2, 12, 12)
    call = PAMI(model, preprocess=normalize, batch_size=5).call
    metric = Deletion(call, step=9)
    assert metric.call is call and metric.batch_size == 5
    assert Deletion(call, batch_size=7).batch_size == 7 and call.batch_size == 5
    metric.update(heat, images=x)
    want = Deletion(model, step=9, preprocess=normalize)
    want.update(heat, images=x)
    assert torch.equal(metric.curve()[1], want.curve()[1])


# ---------------------------------------------------------------------------------------- batch size of the outputs


class OneRow(nn.Module):
    """Returns one row whatever the batch: a squeeze or a fixed batch size gone wrong."""

    def __init__(self, wrap: Callable[[torch.Tensor], Any] = lambda out: out) -> None:
        super().__init__()
        self.linear, self.wrap = nn.Linear(12, 3), wrap

    def forward(self, x: torch.Tensor) -> Any:
        return self.wrap(self.linear(x.flatten(1))[:1])


@pytest.mark.parametrize("wrap", [lambda o: o, lambda o: {"logits": o}, lambda o: (o, o)], ids=["tensor", "dict", "tuple"])
def test_the_wrong_batch_size_says_which_call_returned_what(wrap):
    with pytest.raises(ValueError, match=r"returned outputs of shape \[1, 3\] for a batch of 4 inputs; it must return one row per input \(\[4, \.\.\.\]\) — check ModelCall\(OneRow"):
        ModelCall(OneRow(wrap)).clean(torch.rand(4, 3, 2, 2), target=torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("user", ["PAMI", "Insertion"])
def test_pami_and_insertion_report_the_wrong_batch_size_not_an_index_error(user):
    x = torch.rand(2, 3, 2, 2)
    with pytest.raises(ValueError, match=r"returned outputs of shape \[1, 3\] for a batch of \d+ inputs"):
        if user == "PAMI":
            PAMI(OneRow(), SlidingWindow(0, 1), Constant(0.0)).explain(x, target=1)
        else:
            Insertion(OneRow(), step=1).update(torch.rand(2, 2, 2), images=x, target=1)


# ---------------------------------------------------------------------------------------- the defects, in every user


@pytest.mark.parametrize("user", ["PAMI", "Insertion", "Deletion"])
@pytest.mark.parametrize("form", ["module", "forward adapter", "bound method", "partial of a function"])
def test_a_wrapped_batchnorm_dropout_model_runs_in_eval_mode(form, user):
    # A lambda-like adapter or a partial used to run the model in train mode: BatchNorm statistics
    # overwritten, and Dropout making two identical calls give different maps.
    model = bn_dropout_model()
    stats = model[1].running_mean.clone(), model[1].running_var.clone(), int(model[1].num_batches_tracked)
    x, heat = random_images(1, 16), torch.rand(1, 16, 16)
    if user == "PAMI":
        explainer = PAMI(**FORMS[form](model), partition=SlidingWindow(4, 4), masker=Constant(0.0))
        a, b = explainer.explain(x, target=1), explainer.explain(x, target=1)
    else:
        metric = {"Insertion": Insertion, "Deletion": Deletion}[user](**FORMS[form](model), step=16)
        curves = []
        for _ in range(2):
            metric.reset()
            metric.update(heat, images=x)
            curves.append(metric.curve()[1])
        a, b = curves
    assert torch.equal(a, b)  # Dropout(0.9) in train mode would make them differ
    assert a.std() > 1e-4
    assert model[2].seen and all(not training and inference for training, inference in model[2].seen)
    assert torch.equal(model[1].running_mean, stats[0]) and torch.equal(model[1].running_var, stats[1])
    assert int(model[1].num_batches_tracked) == stats[2]
    assert model.training


@pytest.mark.parametrize("user", [PAMI, Insertion, Deletion, insertion_curves, deletion_curves])
def test_a_bare_lambda_around_a_module_warns_in_every_user(user):
    model = bn_dropout_model()
    args = (random_images(1, 8), torch.rand(1, 8, 8)) if user in (insertion_curves, deletion_curves) else ()
    kwargs = {"step": 64} if args else {}
    with pytest.warns(UserWarning, match=PLAIN):
        user(lambda x: model(x), *args, **kwargs)


# ---------------------------------------------------------------------------------------- layering

OWNERS = {"pami_lightning.explainer", "pami_lightning.engine", "pami_lightning.forward"}
#: The engine: these modules may use each other's private names (and forward.py its own).
ENGINE = {"pami_lightning.explainer", "pami_lightning.engine"}
#: Private attributes that once let the callback reach into the explainer, on any object.
REACHED_INTO = {"_forward", "_copy", "_targets"}


def private_uses(source: str, module: str, is_package: bool = False) -> list[str]:
    """Private names of the engine modules that ``module`` (dotted name) uses: ``"line: what"``."""
    if module in ENGINE:
        return []
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, int, str]] = []
    bound: dict[str, str] = {}  # local name -> the owner module it names
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            source_module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:
                if source_module in OWNERS and source_module != module and alias.name.startswith("_"):
                    found.append((node.lineno, node.col_offset, f"from {source_module} import {alias.name}"))
                if f"{source_module}.{alias.name}" in OWNERS:
                    bound[alias.asname or alias.name] = f"{source_module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in OWNERS and alias.asname:
                    bound[alias.asname] = alias.name
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            owner = _dotted(node.value, bound)
            if owner in OWNERS and owner != module:
                found.append((node.lineno, node.col_offset, f"{owner}.{node.attr}"))
            elif node.attr in REACHED_INTO and module not in OWNERS:
                found.append((node.lineno, node.col_offset, f".{node.attr}"))
    return [f"{line}: {what}" for line, _, what in sorted(found)]


def _dotted(node: ast.expr, bound: dict[str, str]) -> str | None:
    """``a.b.c`` of a chain of names and attributes, with locally bound module names resolved."""
    if isinstance(node, ast.Name):
        return bound.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value, bound)
        return None if head is None else f"{head}.{node.attr}"
    return None


def test_the_layering_check_finds_each_kind_of_private_use():
    source = """\
from ..explainer import PAMI, _roll
from .. import engine as e, forward
import pami_lightning.forward as fw
import pami_lightning.engine
e._Run; forward._eval_mode; fw._check_batch; pami_lightning.engine._rows
explainer._forward(explainer._copy(x)); self._targets
from ..forward import ModelCall; self._explain(); e.run_views  # public names and one's own privates: fine
"""
    assert private_uses(source, "pami_lightning.callbacks.mine") == [
        "1: from pami_lightning.explainer import _roll",
        "5: pami_lightning.engine._Run",
        "5: pami_lightning.forward._eval_mode",
        "5: pami_lightning.forward._check_batch",
        "5: pami_lightning.engine._rows",
        "6: ._forward",
        "6: ._copy",
        "6: ._targets",
    ]
    assert private_uses("from . import _roll", "pami_lightning", is_package=True) == []
    assert private_uses("from .explainer import _roll", "pami_lightning", is_package=True) == ["1: from pami_lightning.explainer import _roll"]


def test_nothing_outside_the_engine_uses_its_private_names():
    root = Path(pami_lightning.__file__).parent
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        uses = private_uses(path.read_text(), module, is_package)
        if uses:
            found[str(path.relative_to(root.parent))] = uses
    assert not found, f"private engine names used outside explainer.py / engine.py (make them public or go through ModelCall): {found}"
