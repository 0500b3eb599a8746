"""Registry writes, one module per entity: ``base_models``, ``versions``, ``aliases`` (promote,
rollback, history), ``checks`` (the pre-promotion check), ``evaluations`` and ``mlflow_sync``."""
