"""Modality classification and selection from headers (unit level, no pixel data)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from operators.selection.modality_selector import SelectionRules, classify, select_modalities
from operators.study_model import LoadedSeries, LoadedStudy, SeriesHeader

RULES = SelectionRules.load()
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def header(desc: str, *, tr=None, te=None, ti=None, seq=("SE",), agent="", uid=None, number=1,
           thickness=5.0, orientation=AXIAL, image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
           acq_type="2D", time="120000", frames=30, modality="MR", protocol="") -> SeriesHeader:
    return SeriesHeader(
        series_instance_uid=uid or f"1.2.3.{abs(hash((desc, number))) % 10**8}",
        series_number=number, series_description=desc, protocol_name=protocol,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4", modality=modality, image_type=image_type,
        scanning_sequence=seq, sequence_variant=(), mr_acquisition_type=acq_type,
        repetition_time_ms=tr, echo_time_ms=te, inversion_time_ms=ti, contrast_bolus_agent=agent,
        slice_thickness_mm=thickness, pixel_spacing_mm=(1.0, 1.0), image_orientation=orientation,
        acquisition_time=time, series_time=time, number_of_instances=frames, number_of_frames=frames,
    )


FLAIR = header("AX FLAIR", tr=9000, te=81, ti=2500, seq=("SE", "IR"), number=4)
T1 = header("AX T1 SE", tr=550, te=10, number=2, time="110000")
T1CE = header("AX T1 POST GD", tr=550, te=10, agent="Gadobutrol", number=5, time="130000")
T2 = header("t2_tse_tra", tr=5000, te=100, number=3)


@pytest.mark.parametrize("h, expected", [(FLAIR, "flair"), (T1, "t1"), (T1CE, "t1ce"), (T2, "t2")])
def test_site_style_series_are_classified(h: SeriesHeader, expected: str) -> None:
    assert classify(h, RULES).modality == expected


def test_parameters_outweigh_a_lying_description() -> None:
    # Described FLAIR, acquired as a T1 spin echo (short TR/TE, no inversion).
    liar = header("AX FLAIR", tr=500, te=9, seq=("SE",))
    assert classify(liar, RULES).modality == "t1"


def test_contrast_decides_between_t1_and_t1ce() -> None:
    plain = header("t1_mprage_tra", tr=2000, te=3, ti=900, seq=("GR", "IR"))
    post = dataclasses.replace(plain, contrast_bolus_agent="Dotarem")
    assert classify(plain, RULES).modality == "t1"
    assert classify(post, RULES).modality == "t1ce"


def test_t1_after_contrast_injection_counts_as_post_contrast() -> None:
    # No agent on the series itself and a neutral name, but acquired after a series that had one.
    late = header("T1 3D", tr=600, te=12, time="140000", number=9)
    assert classify(late, RULES, after_contrast=True).modality == "t1ce"
    assert classify(late, RULES, after_contrast=False).modality == "t1"


@pytest.mark.parametrize(
    "h, reason_part",
    [
        (header("3-plane loc", tr=8, te=2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")), "LOCALIZER"),
        (header("ADC map", tr=5000, te=90, image_type=("DERIVED", "PRIMARY", "ADC")), "ADC/DERIVED (map)"),
        (header("T1 MIP", tr=20, te=3, image_type=("DERIVED", "SECONDARY", "MIP")), "(projection)"),
        (header("ADC MPR", image_type=("DERIVED", "SECONDARY", "MPR", "ADC")), "ADC (map)"),
        (header("screen", tr=550, te=10, image_type=("DERIVED", "SECONDARY", "SCREEN SAVE")), "(screen capture)"),
        (header("T1 derived", tr=550, te=10, image_type=("DERIVED", "SECONDARY")), "not a reformat"),
        (header("CT head", modality="CT"), "not MR"),
        (header("AX T2", tr=5000, te=100, frames=3), "slice"),
    ],
)
def test_unusable_series_are_other_with_reason(h: SeriesHeader, reason_part: str) -> None:
    candidate = classify(h, RULES)
    assert candidate.modality == "other"
    assert reason_part in candidate.reasons[0]


def _study(*headers: SeriesHeader) -> LoadedStudy:
    return LoadedStudy("1.2.3", "P1", [LoadedSeries(h, [], []) for h in headers])


def test_selection_reports_missing_and_reasons() -> None:
    selection = select_modalities(_study(T1CE, T2), RULES)
    assert selection.availability == {"flair": False, "t1": False, "t1ce": True, "t2": True}
    assert selection.missing == ["flair", "t1"]
    assert selection.reasons["flair"].startswith("missing")
    assert "only candidate" in selection.reasons["t1ce"]


def test_preference_finest_resolution_then_axial() -> None:
    sag = header("T2 SAG", tr=5000, te=100, orientation=SAGITTAL, thickness=1.0, number=7)
    thick = header("T2 AX thick", tr=5000, te=100, thickness=6.0, number=8)
    thin = header("T2 AX thin", tr=5000, te=100, thickness=3.0, number=9)
    selection = select_modalities(_study(sag, thick, thin), RULES)
    assert selection.selected["t2"].header.series_number == 7  # 1 mm sagittal beats 3 mm axial
    assert "chosen over series" in selection.reasons["t2"]
    sag3 = dataclasses.replace(sag, slice_thickness_mm=3.0)
    selection = select_modalities(_study(sag3, thick, thin), RULES)
    assert selection.selected["t2"].header.series_number == 9  # equal resolution: axial


def test_post_contrast_flair_is_second_choice() -> None:
    pre = header("AX FLAIR", tr=9000, te=81, ti=2500, seq=("SE", "IR"), number=4, time="110500", thickness=4.0)
    post = dataclasses.replace(pre, series_instance_uid="1.2.3.99", series_number=12, acquisition_time="131000",
                               series_time="131000", slice_thickness_mm=3.0)
    selection = select_modalities(_study(T1, pre, post, T1CE), RULES)
    assert selection.selected["flair"].header.series_number == 4, selection.reasons["flair"]
    assert selection.contrast["series"][post.series_instance_uid]["phase"] == "post"


def test_rules_file_is_validated(tmp_path: Path) -> None:
    bad = json.loads(Path("app/modality_rules.json").read_text())
    bad["selections"][0]["name"] = "pd"
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="selections must be named"):
        SelectionRules.load(path)


def test_real_scanner_series_are_loaded_and_classified(shared_dir: Path) -> None:
    from operators.dicom.study_loader import load_study

    for folder, frames in (("ge-3d-t1-mprage", 130), ("siemens-xa30-enhanced-t1", 96)):
        study = load_study(shared_dir / "data/real-mr-dicom" / folder)
        selection = select_modalities(study, SelectionRules.load())
        assert study.series[0].header.number_of_frames == frames
        assert list(selection.selected) == ["t1"], selection.candidates
        assert selection.missing == ["flair", "t1ce", "t2"]


# ---------------------------------------------------------------------------------------
# reformats (MPR) are images; classification without TR / TE
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("image_type", [("ORIGINAL", "PRIMARY", "MPR"), ("DERIVED", "SECONDARY", "MPR"),
                                        ("DERIVED", "SECONDARY", "REFORMATTED")])
def test_reformats_without_timing_are_classified(image_type: tuple[str, ...]) -> None:
    t2 = header("T2 SPACE 1mm ax MPR", image_type=image_type, seq=("SE",), thickness=1.0)
    t1 = header("T1 MPRAGE post KM ax MPR", image_type=image_type, seq=("GR", "IR"), thickness=1.0)
    flair = header("FLAIR 3D ax MPR", image_type=image_type, seq=("SE", "IR"), thickness=1.0)
    assert classify(t2, RULES).modality == "t2"
    assert classify(t1, RULES).modality == "t1ce"
    assert classify(flair, RULES).modality == "flair"  # no TI recorded, and no TR either: not held against it


def test_original_is_preferred_over_a_reformat_and_a_reformat_alone_is_chosen() -> None:
    original = header("AX T2 TSE", tr=5000, te=100, thickness=4.0, number=3)
    reformat = header("T2 SPACE ax MPR", thickness=1.0, number=30, image_type=("DERIVED", "SECONDARY", "MPR"))
    both = select_modalities(_study(FLAIR, T1, T1CE, original, reformat), RULES)
    assert both.selected["t2"].header.series_number == 3  # finer, but a reformat: the original wins
    assert "chosen over series 30" in both.reasons["t2"]
    alone = select_modalities(_study(FLAIR, T1, T1CE, reformat), RULES)
    assert alone.selected["t2"].header.series_number == 30 and "(a reformat)" in alone.reasons["t2"]


def test_a_reformat_named_a_projection_is_set_aside() -> None:
    """GE writes MIPs as DERIVED\\SECONDARY\\REFORMATTED: the description tells."""
    mip = header("Ax 3D BRAVO MIP", tr=8.2, te=3.2, image_type=("DERIVED", "SECONDARY", "REFORMATTED"))
    candidate = classify(mip, RULES)
    assert candidate.modality == "other" and "names a projection" in candidate.reasons[0]


# ---------------------------------------------------------------------------------------
# like-for-like contrast comparisons: what makes two T1s of one kind
# ---------------------------------------------------------------------------------------
def test_series_kind_and_like_for_like() -> None:
    from operators.selection.contrast_phase import like_for_like, likeness, series_kind

    coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    ffe = series_kind(header("3D_T1W_FFE_COR", protocol="3D_T1W_FFE_COR", acq_type="3D", orientation=coronal))
    se_fs = series_kind(header("T1W_SE-TRA_FS", protocol="T1W_SE-TRA_FS"))
    iso_fs = series_kind(header("3D_T1W_TFE_FS_ISO", protocol="3D_T1W_TFE_FS_ISO", acq_type="3D"))
    scan_fs = series_kind(dataclasses.replace(header("t1_tse_tra"), scan_options=("FS",)))
    assert (ffe.fat_suppressed, se_fs.fat_suppressed, iso_fs.fat_suppressed, scan_fs.fat_suppressed) == (False, True, True, True)
    assert ffe.plane == "coronal" and se_fs.plane == "axial"
    assert like_for_like(se_fs, se_fs)  # the same protocol
    assert not like_for_like(ffe, se_fs)  # fat suppression differs: never compared as alike
    assert not like_for_like(se_fs, iso_fs)  # 2-D vs 3-D of one fat suppression: not alike
    # the FS iso's most alike earlier series is the SE FS (fat suppression ranks above 2-D / 3-D)
    assert likeness(se_fs, iso_fs) > likeness(ffe, iso_fs)
    assert not series_kind(header("FSE T2 first")).fat_suppressed
