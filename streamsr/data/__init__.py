"""Data: the project's one bicubic kernel, colour transfer curves, datasets and generators."""
