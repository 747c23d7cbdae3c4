"""The one training loop and its parts: the trainer, data, precision, sharding (FSDP2),
checkpoints, observers, the lost-update sentinel and the run log. torch; no Ray, no TOML."""
