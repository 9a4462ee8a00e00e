"""What the paper's protocol needs besides the videos: prompts and the datasets' official lists (README.md)."""
