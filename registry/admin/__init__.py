"""Admin for the registry: register base models (validated by the same service as the
``register_base_model`` command), and read-only views of registered models, versions (with
their lineage), aliases and their history, evaluations and comparisons.

Versions are created by finished jobs (with their adapter files), and every alias move must
pass the serving check and leave an ``AliasEvent``; an edit by hand would skip all of that, so
those pages are view-only. Alias moves are admin actions with a confirmation page that call
the services the API and ``manage.py promote`` / ``rollback`` call: "Promote to an alias…" on
versions, "Roll back…" on aliases. They need ``registry.change_alias``.
"""

from registry.admin import base_models, evaluations, versions

__all__ = ["base_models", "evaluations", "versions"]
