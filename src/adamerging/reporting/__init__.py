"""Reports: per-task tables and normalized accuracy (`tables`), the paper's numbers (`paper`),
results files (`results`), figures (`plotting`) and TensorBoard curves (`run_log`)."""
