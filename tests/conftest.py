"""Shared fixtures. The helpers themselves live in ``tests/helpers/`` (models, images, log readers,
callback and evaluation pieces), importable as ``helpers.*`` because pytest puts this folder on ``sys.path``."""

from __future__ import annotations

import pytest
from torch import nn

from helpers.models import make_cnn


@pytest.fixture
def cnn() -> nn.Module:
    return make_cnn()
