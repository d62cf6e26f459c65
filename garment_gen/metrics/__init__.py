"""Metrics shared by training (validation logs) and evaluation (the evaluator's table).

* :mod:`~garment_gen.metrics.realism`: Fréchet distance and KID on a named backbone;
* :mod:`~garment_gen.metrics.garment`: IoU, garment masks of generated images, colour
  histograms and their Hellinger distance, garment crops.
"""

from garment_gen.metrics.realism import RealismMetric, VGGFeatures, frechet_distance, kid

__all__ = ["RealismMetric", "VGGFeatures", "frechet_distance", "kid"]
