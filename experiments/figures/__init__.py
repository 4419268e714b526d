"""The experiments' figures: one module per script, each drawing from the script's
``result.json`` (so ``--replot`` redraws them without rerunning anything)."""
