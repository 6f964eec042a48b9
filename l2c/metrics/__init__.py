"""Image-quality metrics under the ADM evaluation protocol (IS, FID, sFID, improved precision/recall)
plus KID, with two feature back-ends: the 2015 Inception graph through torch-fidelity
(``inception-adm``) and a small digits CNN trained in the project (``digits``).

- :mod:`l2c.metrics.adm`: the numpy/scipy maths (statistics, Fréchet distance, IS, P/R, KID).
- :mod:`l2c.metrics.npz`: reading and validating ADM-format ``.npz`` sample / reference batches.
- :mod:`l2c.metrics.features`: the feature extractors (digits CNN, ADM-compatible Inception).
- :mod:`l2c.metrics.evaluate`: the end-to-end evaluation of a sample file against a reference file.

Numbers from different back-ends are never comparable; every result records which produced it."""
from .adm import feature_statistics, frechet_distance, inception_score, kid, precision_recall  # noqa: F401
