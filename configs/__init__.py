"""Experiment configs (ml_collections). Each file's get_config(arg) docstring shows its command."""
