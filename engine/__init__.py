"""embprof engine."""
