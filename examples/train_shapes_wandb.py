"""The shapes training demo of ``train_shapes.py``, logged to Weights & Biases in offline mode.

Same data, model, callback and trainer as ``train_shapes.py`` (imported from it); only the logger
differs: a :class:`~lightning.pytorch.loggers.WandbLogger`. :class:`~pami_lightning.PAMICallback`
logs to W&B the ``pami/*`` scores, the overlays and timeline as ``wandb.Image`` s, one image per
sample with its caption (index, label, prediction, confidence) and ``pami/table``, a sample x
validation table of the per-sample scores.

The run is offline unless you set ``WANDB_MODE`` yourself (no account or network needed): it is
written under ``<save-dir>/wandb/offline-run-*``, and the script prints the ``wandb sync`` command
that uploads it later.

Run::

    python examples/train_shapes_wandb.py                        # offline, under logs/wandb/
    wandb sync logs/wandb/offline-run-...                        # upload it later (needs a login)
    WANDB_MODE=online python examples/train_shapes_wandb.py      # or log online straight away

Flags: ``--fast`` (small data, 2 epochs, for CI), ``--max-epochs N``, ``--save-dir DIR``,
``--project NAME``, ``--seed S``.
"""

from __future__ import annotations

import os
from typing import Optional

import wandb
from lightning.pytorch.loggers import WandbLogger
from train_shapes import format_scores, train, training_parser


def main(argv: Optional[list[str]] = None) -> dict[str, float]:
    parser = training_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--save-dir", default="logs", help="folder of the wandb/ run folders (default: logs)")
    parser.add_argument("--project", default="pami-lightning-examples", help="W&B project (default: pami-lightning-examples)")
    args = parser.parse_args(argv)

    # Offline unless the user chose a mode: the example must run without an account or network.
    os.environ.setdefault("WANDB_MODE", "offline")
    logger = WandbLogger(project=args.project, name="train_shapes", save_dir=args.save_dir)
    try:
        scores = train(args.fast, args.max_epochs, args.seed, logger)
        run = logger.experiment
        run_dir, offline, url = os.path.abspath(os.path.dirname(run.dir)), run.offline, run.url  # run.dir: <run>/files
    finally:
        wandb.finish()

    print(f"\nFinal scores: {format_scores(scores)}")
    if offline:
        print(f"Offline W&B run: {run_dir}\nUpload it with:  wandb sync {run_dir}")
    else:
        print(f"W&B run: {url}")
    return scores


if __name__ == "__main__":
    main()
