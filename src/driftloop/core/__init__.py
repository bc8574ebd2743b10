"""The small core every stage shares: the spec, the project layout, the state database,
errors, and the stage runner.
"""
