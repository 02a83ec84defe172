"""Faithfulness metrics for class activation maps, batched and on the model's device.

Each metric returns one value per image as a torch tensor (B,) (curves: (B, steps)); average
over a data set to report it. Confidence-based metrics take the model, the images (B, C, H, W),
the maps (B, H, W) (numpy or torch, in [0, 1]) and optional targets (class indices or
``ClassifierOutputTarget``; default: each image's top class). Localisation metrics compare maps
with ground-truth masks or boxes.

=========================  ======================================  =========
metric                     function                                better
=========================  ======================================  =========
Average Drop               ``average_drop``                        lower
Increase in Confidence     ``increase_in_confidence``              higher
confidence change          ``confidence_change``                   higher
ROAD (MoRF / LeRF)         ``road_curve``, ``road_score``          MoRF lower, LeRF higher
deletion AUC               ``deletion_auc`` (``deletion_curve``)   lower
insertion AUC              ``insertion_auc`` (``insertion_curve``) higher
pointing game              ``pointing_game``                       higher
energy pointing game       ``energy_pointing_game``                higher
=========================  ======================================  =========

``evaluate_faithfulness`` (``pytorch_cam.metrics.faithfulness``) runs CAM methods over images with
ground-truth masks and reports every metric above per method: which map to trust.

Every metric that runs the model takes ``precision="fp32"|"bf16"|"fp16"`` (autocast for its
forwards, float32 results) and ``memory_format``; see docs/metrics_precision.md.

pytorch-grad-cam's metric classes, same names and signatures, batched on these functions:
``pytorch_cam.metrics.road`` (``ROADMostRelevantFirst``, ``ROADCombined``, ``NoisyLinearImputer``, ...),
``.cam_mult_image`` (``DropInConfidence``, ``IncreaseInConfidence``, ...), ``.perturbation_confidence``
(``PerturbationConfidenceMetric``, ``AveragerAcrossThresholds``, ...) and ``.arcc`` (``ARCC``).
"""

from pytorch_cam.metrics.confidence import average_drop, confidence_change, increase_in_confidence, masked_scores
from pytorch_cam.metrics.deletion import auc, deletion_auc, deletion_curve, insertion_auc, insertion_curve
from pytorch_cam.metrics.faithfulness import evaluate_faithfulness
from pytorch_cam.metrics.pointing import boxes_to_masks, energy_pointing_game, pointing_game
from pytorch_cam.metrics.road import DEFAULT_PERCENTILES, noisy_linear_impute, road_curve, road_score

__all__ = [
    "DEFAULT_PERCENTILES",
    "auc",
    "average_drop",
    "boxes_to_masks",
    "confidence_change",
    "deletion_auc",
    "deletion_curve",
    "energy_pointing_game",
    "evaluate_faithfulness",
    "increase_in_confidence",
    "insertion_auc",
    "insertion_curve",
    "masked_scores",
    "noisy_linear_impute",
    "pointing_game",
    "road_curve",
    "road_score",
]
