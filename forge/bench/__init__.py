"""`forge bench TARGET`: one module per target, on top of the tiers (they never import it).

e2e (forge launch end to end), gateway, engine, tree, trainer, pool, scheduler; pool_common is
the data-pool benchmarks' shared plumbing.
"""
