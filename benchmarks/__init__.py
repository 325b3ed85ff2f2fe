"""Speed and quality measurements (not tests): each script prints a table and writes JSON to results/."""
