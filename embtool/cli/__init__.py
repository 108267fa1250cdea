"""The click layer: one small module per command, each calling one core function."""
