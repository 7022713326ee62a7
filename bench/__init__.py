"""`kdtui bench`: speed of our engine against a reference-style loop, in one process."""
