"""The engine: judge each case (references, candidate, comparisons) and assemble the Report."""
