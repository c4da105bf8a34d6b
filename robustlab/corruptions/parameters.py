"""Severity 1..5 parameters of the 19 corruptions: `cifar` (CIFAR-10-C generation) and `imagenet` (ImageNet-C).

Numbers as published in Hendrycks & Dietterich's benchmark code (make_cifar_c.py, make_imagenet_c.py).
Zoom-blur factor lists are written as (start, stop, step) of np.arange, as there.
"""
from __future__ import annotations

from typing import Any

CIFAR: dict[str, list[Any]] = {
    "gaussian_noise": [0.04, 0.06, .08, .09, .10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [.01, .02, .03, .05, .07],
    "speckle_noise": [.06, .1, .12, .16, .2],
    "gaussian_blur": [.4, .6, 0.7, .8, 1],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],  # sigma, max_delta, iterations
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],  # radius, alias_blur
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],  # radius, sigma
    "zoom_blur": [(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)],
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    # frost: image weight, texture weight, texture scale (CIFAR-10-C shrinks the photographs to 0.2)
    "frost": [(1, 0.2, 0.2), (1, 0.3, 0.2), (0.9, 0.4, 0.2), (0.85, 0.4, 0.2), (0.75, 0.45, 0.2)],
    "fog": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [.05, .1, .15, .2, .3],
    "contrast": [.75, .5, .4, .3, 0.15],
    # elastic_transform: alpha, sigma, affine jitter as fractions of the image side
    "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
    "spatter": [(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)],
    "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
}

IMAGENET: dict[str, list[Any]] = {
    "gaussian_noise": [.08, .12, 0.18, 0.26, 0.38],
    "shot_noise": [60, 25, 12, 5, 3],
    "impulse_noise": [.03, .06, .09, 0.17, 0.27],
    "speckle_noise": [.15, .2, 0.35, 0.45, 0.6],
    "gaussian_blur": [1, 2, 3, 4, 6],
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "zoom_blur": [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)],
    "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
             (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
    "frost": [(1, 0.4, 1), (0.8, 0.6, 1), (0.7, 0.7, 1), (0.65, 0.7, 1), (0.6, 0.75, 1)],
    "fog": [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)],
    "brightness": [.1, .2, .3, .4, .5],
    "contrast": [0.4, .3, .2, .1, .05],
    # ImageNet-C's own numbers are multiples of 244 (a typo for 224 in the original, kept as published)
    "elastic_transform": [(244 * 2 / 224, 244 * 0.7 / 224, 244 * 0.1 / 224),
                          (244 * 2 / 224, 244 * 0.08 / 224, 244 * 0.2 / 224),
                          (244 * 0.05 / 224, 244 * 0.01 / 224, 244 * 0.02 / 224),
                          (244 * 0.07 / 224, 244 * 0.01 / 224, 244 * 0.02 / 224),
                          (244 * 0.12 / 224, 244 * 0.01 / 224, 244 * 0.02 / 224)],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "jpeg_compression": [25, 18, 15, 10, 7],
    "spatter": [(0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
                (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1)],
    "saturate": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],
}

PARAMETER_SETS = {"cifar": CIFAR, "imagenet": IMAGENET}
# the name robustlab gave the choice of parameter set before `parameters` (suite key, --option, layout and manifest
# field); suites, layouts, run manifests and command lines that use it are still read
OLD_PARAMETERS_KEY = "table"
SET_NAMES = " or ".join(PARAMETER_SETS)  # for the refusal of a name that is none of them


def default_parameters(dataset: str) -> str:
    """The parameter set of a dataset's corruptions when no suite names one: ImageNet-C's for ImageNet."""
    return "imagenet" if dataset == "imagenet" else "cifar"
# elastic_transform's three numbers are fractions of the image side (alpha, sigma, affine jitter), so one
# parameter set serves every image size; CIFAR's were published as IMSIZE * fraction, ImageNet's as 244 * f / 224.

BENCHMARK = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
             "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
             "jpeg_compression"]
EXTRA = ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
