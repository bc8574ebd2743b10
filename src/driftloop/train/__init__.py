"""Train: the pure fit (window, split, pipeline, metrics) and the train stage's edge."""
