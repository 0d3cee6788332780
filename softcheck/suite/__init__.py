"""What to check: options → Config → cases → seeded inputs; batch files → groups."""
