"""The benchmark of the study: the timing protocol, the grid runner and the analysis of its table."""
