"""What a model is measured on: the tasks (``tasks/``), the evaluation through lm-eval and the
LLM judge of open-ended answers."""
