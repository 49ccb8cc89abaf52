"""The runtime every layer stands on, knowing nothing of models or data: the errors a user can fix,
writing files atomically, the compute device and its numerics, torchrun ranks, and the
command-line error handler."""
