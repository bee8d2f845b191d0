"""One module per DVC stage (`run(p)` reads, computes, validates, publishes), plus `base` for what they share."""
