"""Lightning integration: explanations computed, scored and logged during training."""

from .options import PAMIOptions
from .pami_callback import PAMICallback
from .pictures import Pictures
from .samples import Sample, default_batch_to_sample

__all__ = ["PAMICallback", "PAMIOptions", "Pictures", "Sample", "default_batch_to_sample"]
