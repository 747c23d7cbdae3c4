"""What a pluggable kind is declared with, below every other package of the house (``methods``,
``bench``, ``reports``): typed options built from a plain table (``pluggable.options``) and the
name registry (``pluggable.registry``). It imports nothing of the project, and no torch."""
