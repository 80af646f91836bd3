"""zigma: Zigzag-Mamba diffusion models in plain PyTorch.

Importing zigma touches no GPU, imports no optional extra and sets no global flag.
"""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
