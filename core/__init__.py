"""Helpers below every other package of the house (``methods``, ``bench``, ``reports``): they
import nothing of the project, and no torch."""
