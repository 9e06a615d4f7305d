"""datacraft: curate instruction-tuning data for LLMs (PyPI distribution: datacraft-curate)."""

__version__ = "0.1.0"
