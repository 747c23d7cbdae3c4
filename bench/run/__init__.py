"""One run: cells (grid and run files -> validated cells), the checks before any model loads, the
memory plan, the regimes, the execution that builds the result, and the result files."""
