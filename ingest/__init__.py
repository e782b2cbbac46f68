"""Reading Engram JSONL logs: parsing each line, and storing every new complete line exactly once."""
