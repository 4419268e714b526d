"""Configs as code (ml_collections). Each file's header says what it reproduces and how to run
it."""
