"""trackflow pipeline."""
