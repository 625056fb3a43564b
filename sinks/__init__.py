"""trackflow sinks."""
