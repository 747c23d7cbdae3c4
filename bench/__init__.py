"""Everything that runs: config, backbones, tasks, the one training loop, evaluation, regimes,
single runs, the Ray grid and the command line."""
