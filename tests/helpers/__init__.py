"""Shared test helpers, one concept per module.

- ``models``: the one tiny CNN (``TinyCNN``, ``make_cnn``, ``TinyLit``) and the known-answer models
  (``BoxModel``, ``ColourModel``).
- ``images``: seeded images and the coloured-square ``shapes`` dataset with masks.
- ``logs``: reading TensorBoard event files and W&B offline runs back.
- ``callbacks``: loaders, a ``PAMICallback`` and a ``Trainer`` sized for tests.
- ``evaluation``: a VOC-format dataset written on the fly and one dataset-scale evaluation run.
"""
