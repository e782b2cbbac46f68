"""Reading Engram JSONL logs exactly once and turning messages into training samples."""
