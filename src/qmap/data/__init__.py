"""Datasets: CIFAR-10 (official pickles, JPEG mirror, genuine prefix), image folders/tars, calibration sets.

Everything returns an :class:`ImageDataset` (uint8 NHWC images + int64 labels); :func:`to_tensor` and
:func:`batches` turn it into normalised float NCHW tensors.
"""

from .calib import calibration_indices, calibration_set
from .datasets import CLASSES, describe_sources, load_cifar10, load_split
from .folders import load_image_folder
from .imageset import ImageDataset
from .loaders import batches, to_tensor
from .root import resolve_data_root

__all__ = ["CLASSES", "ImageDataset", "batches", "calibration_indices", "calibration_set", "describe_sources",
           "load_cifar10", "load_image_folder", "load_split", "resolve_data_root", "to_tensor"]
