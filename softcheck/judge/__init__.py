"""The judge: per-dtype tolerances, entry-by-entry comparison, invariants, diagnosis."""
