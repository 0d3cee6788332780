"""Tools beside the pipeline: explain (the derivation), mutants (proof of power), steps (FD sweep)."""
