"""The machinery that methods share, each module one piece: collectives (no-ops in one process),
held sets, top-fraction selection, importance estimates, mask bookkeeping, the isolation base
classes (fixed and re-selected masks), task merging, and the hook contexts. A method's own file
lives one level up, in ``methods/``; this package imports no method."""
