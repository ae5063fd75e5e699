"""Evaluating a model directory: its task's held-out scores (:mod:`~duplexlm.eval.evaluate`), its
language-model perplexity (:mod:`~duplexlm.eval.lm`) and its generations (:mod:`~duplexlm.eval.generate`).

The scores themselves are pure functions in :mod:`duplexlm.scores`; the plots are in :mod:`duplexlm.plots`.
"""
