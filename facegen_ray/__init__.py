"""facegen-ray: distributed StyleGAN face generation on Ray."""

__version__ = "0.1.0"
