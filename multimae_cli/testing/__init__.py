"""The conformance kit: checks a plugin author calls from pytest to know a plugin keeps the contract.

    from multimae_cli.testing import check_modality

    def test_thermal_conforms():
        check_modality(registered_modality("thermal"))

Each check runs what the core will run (read/write, the shared crop/flip/resize, normalise, the adapters, the
masked loss, colourising, a tiny training step) on small synthetic data and raises `AssertionError` with one
line naming the record and the problem. Everything runs on the CPU in about a second per record.
"""

from ._common import (
    DIM,
    IMAGE_SIZE,
    PATCH_SIZE,
    SAMPLE_SIZE,
    file_array,
    make_sample,
    registered_modality,
    registered_task,
    registered_teacher,
)
from .extensions import check_plugin, check_task, check_teacher
from .modalities import check_modality

__all__ = ["DIM", "IMAGE_SIZE", "PATCH_SIZE", "SAMPLE_SIZE", "check_modality", "check_plugin", "check_task",
           "check_teacher", "file_array", "make_sample", "registered_modality", "registered_task",
           "registered_teacher"]
