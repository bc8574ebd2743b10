"""Features: one feature function for a batch and for one request, and the stage's edge."""
