"""Dataset-scale explanation and evaluation on Lightning's distributed engine (the paper's Table 4).

Explain every image of a dataset with several methods, score each map (pointing game, insertion,
deletion), store maps, curves and a per-sample table as the run goes, resume after a kill, and
merge the shards into one result::

    import lightning.pytorch as pl
    from pami_lightning import PAMI, SlidingWindow, Superpixels
    from pami_lightning.data import VOCDataset
    from pami_lightning.evaluation import CenterBaseline, ExplanationModule, RandomBaseline, evaluate

    module = ExplanationModule(model, {
        "PAMI-I": PAMI(model, SlidingWindow()),
        "PAMI-II": PAMI(model, Superpixels.paper(), second_run=True),
        "random": RandomBaseline(), "center": CenterBaseline(),
    })
    trainer = pl.Trainer(strategy="ddp", devices=8, num_nodes=2, logger=False)
    results = evaluate(trainer, module, VOCDataset("VOC2007", split="test", size=224), "out/")
    results.summary()["PAMI-I"]["pointing_game_per_class"]

The pieces: :class:`Explainer` (the protocol) and its adapters; :class:`ExplanationModule` (the
``predict_step``); :class:`ExplanationWriter` (the files, see :mod:`~pami_lightning.evaluation.layout`);
:class:`EvaluationData` (the remaining samples); :func:`load_results` (the merged :class:`Results`); :func:`write_report` / :func:`log_report` (the Table-4 comparison).
"""

from .aggregate import MethodScores, summarize
from .captum import CaptumFeatureAblation, CaptumOcclusion
from .explainers import CenterBaseline, Explainer, ExplainerLike, FunctionExplainer, PAMIExplainer, RandomBaseline, as_explainer
from .module import METRICS, ExplainedBatch, ExplanationModule, MethodOutput
from .report import MetricEstimate, Report, build_report, log_report, plot_curves, write_report
from .results import MapStack, Results, load_results
from .writer import EvaluationData, ExplanationWriter, evaluate

__all__ = [
    "Explainer",
    "ExplainerLike",
    "as_explainer",
    "PAMIExplainer",
    "FunctionExplainer",
    "RandomBaseline",
    "CenterBaseline",
    "CaptumOcclusion",
    "CaptumFeatureAblation",
    "ExplanationModule",
    "ExplainedBatch",
    "MethodOutput",
    "METRICS",
    "ExplanationWriter",
    "EvaluationData",
    "evaluate",
    "load_results",
    "Results",
    "MapStack",
    "MethodScores",
    "summarize",
    "Report",
    "MetricEstimate",
    "build_report",
    "write_report",
    "plot_curves",
    "log_report",
]
