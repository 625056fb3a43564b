"""trackflow collector."""
