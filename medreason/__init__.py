"""medreason: fine-tune small language models for medical reasoning with TRL + PEFT LoRA, tracked in MLflow.

For teaching. Nothing this package or a model trained with it produces is clinical advice.
"""

__version__ = "0.1.0"
