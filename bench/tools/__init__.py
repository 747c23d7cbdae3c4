"""``python -m`` entry points for measurements (perf, numerics); imported by nobody."""
