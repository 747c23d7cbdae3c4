"""Everything that runs: config, backbones, tasks, the one training loop, evaluation, regimes,
single runs, the Ray grid and the command line."""

import logging

# transformers imports torchao at every model load when it is installed; its CUDA-only extension
# libraries then log load failures on CPU machines, and torch warns about its enums. Neither
# matters to a run: keep them out of the terminal.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
