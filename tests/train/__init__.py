"""Training-side tests (need the [train] extra)."""
