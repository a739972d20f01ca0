"""The typed values of the graph: Timings, the vocabulary enums, the error kinds."""
from __future__ import annotations

import json

import pytest

from engines.model.vocabulary import Fill, Modality, Region, StageGroup
from operators import errors
from operators.spatial.methods import RegistrationBackend
from operators.study_model import Stage, Timings


def test_timings_grow_in_order_and_merging_leaves_the_received_value_alone() -> None:
    received = Timings({Stage.LOAD: 1.0})
    steps = Timings()
    steps.add("resample_t1", 0.5)
    steps.add("total", 2.0)
    own = Timings()
    own.add(Stage.RESAMPLING, 0.25)
    own.add(Stage.RESAMPLING, 0.25)  # series by series: summed
    own.add(Stage.REGISTER_AND_RESAMPLE, 2.0, detail=steps)
    out = received.merged(own)
    assert list(out) == ["load", "resampling", "register_and_resample"]
    assert out[Stage.RESAMPLING] == 0.5 and out.get(Stage.NETWORK, 0.0) == 0.0
    assert out.detail(Stage.REGISTER_AND_RESAMPLE).rounded() == {"resample_t1": 0.5, "total": 2.0}
    assert out.detail(Stage.LOAD) == {}
    assert list(received) == ["load"]  # not changed by the merge
    assert json.dumps(out.rounded()) == '{"load": 1.0, "resampling": 0.5, "register_and_resample": 2.0}'


def test_terms_read_as_their_strings() -> None:
    assert Modality.T1CE == "t1ce" and Modality("t1ce") is Modality.T1CE and Modality.T1CE.display == "T1ce"
    assert f"{Region.ET}" == "ET" and repr([Fill.MATCHED]) == "['matched']"
    assert json.dumps({StageGroup.WT: Fill.ZERO}) == '{"wt": "zero"}'
    assert {"wt": 1}[StageGroup.WT] == 1
    assert RegistrationBackend.TORCH_CPU.torch_device == "cpu" and RegistrationBackend.SIMPLEITK.torch_device is None


@pytest.mark.parametrize(("error", "code", "exit_code"), [
    (errors.InputError, "input_error", 2),
    (errors.InsufficientSequencesError, "insufficient_sequences", 2),
    (errors.OutputNotWritableError, "output_not_writable", 3),
    (errors.ModelFolderError, "model_folder_invalid", 4),
    (errors.InferenceServerError, "inference_server_unavailable", 5),
])
def test_each_error_kind_has_its_exit_code(error: type[errors.AppError], code: str, exit_code: int) -> None:
    exc = error("a\n  message")
    assert (exc.code, exc.exit_code, exc.one_line()) == (code, exit_code, f"{code}: a message")
    assert isinstance(exc, errors.AppError) and exc.report_sections == {}
    kinds = [errors.InputError, errors.OutputNotWritableError, errors.ModelFolderError, errors.InferenceServerError]
    assert sum(isinstance(exc, k) for k in kinds) == 1  # siblings: one kind each
