"""Edge processes: one kind per client protocol, each a thin shell around shared sans-I/O logic."""
