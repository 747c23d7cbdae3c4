"""Where runs are started: the only wing that imports Ray. The grid (Tune trials, manifest,
summary), a Ray session, one dispatch of a cell (this process, or N Ray Train workers) with one
resource policy, the workers, grid progress and the study lock."""
