"""The commands: a method run end to end (`pipeline`: load, merge or learn the merge, evaluate,
report), the results table (`report`), the diagnostics (`diagnose`) and the paper's experiments
(`experiments/`)."""
