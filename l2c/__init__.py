"""l2c-suite: layer caching for diffusion transformers (Learning-to-Cache, Ma et al., NeurIPS 2024)."""
__version__ = "0.1.0"
