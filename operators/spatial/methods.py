"""The spatial stage's method names as types: the registration backend and the brain extraction
method (``brats.registration`` / ``brats.brain_extraction`` in ``app.yaml``).

Both are :class:`~engines.model.vocabulary.Term` s: each member is its setting's string
(``"torch-cuda"``, ``"hd-bet"``) in comparisons, formatting and JSON.
"""
from __future__ import annotations

from engines.model.vocabulary import Term

#: The registration setting that lets the machine decide (a CUDA GPU: PyTorch, else SimpleITK).
AUTO = "auto"


class RegistrationBackend(Term):
    """Who runs the rigid registrations: SimpleITK on the CPU, or PyTorch on a device."""

    SIMPLEITK = "simpleitk"
    TORCH_CUDA = "torch-cuda"
    TORCH_CPU = "torch-cpu"

    @property
    def torch_device(self) -> str | None:
        """The PyTorch device of a PyTorch backend (``"cuda"``, ``"cpu"``); None for SimpleITK."""
        return {RegistrationBackend.TORCH_CUDA: "cuda", RegistrationBackend.TORCH_CPU: "cpu"}.get(self)


class BrainExtraction(Term):
    """How a study that is not skull-stripped gets its brain mask: HD-BET (the template method if
    it fails at run time) or the MNI152 template registration only."""

    HD_BET = "hd-bet"
    TEMPLATE = "template"
