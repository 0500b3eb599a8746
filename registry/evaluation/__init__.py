"""Evaluation of registered versions and A/B comparisons, worker side.

Light modules (imported by the web process through ``registry.services.evaluations`` and the
embedded worker): ``options`` (validated run options), ``errors``, ``report`` (comparison
table, win/tie/loss, Markdown), ``cli`` (command helpers), ``runner`` (claim, run, store).
Heavy modules, imported only while a worker runs an evaluation: ``scoring`` (loads the model
through ``lora_engine.evaluate``), ``metrics`` (rouge-score, sacrebleu) and ``judge`` (httpx).
"""
