"""What a site's scanner writes, per vendor style: the acquisition parameters of a sequence
(:class:`SequenceProtocol`), a scanner's identity with its four brain-tumour protocols
(:class:`VendorProfile`; :data:`VENDORS`: Siemens, GE, Philips naming) and the order the four
sequences are acquired in (:data:`ACQUISITION_ORDER`). Used by every sample study builder."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ACQUISITION_ORDER", "VENDORS", "SequenceProtocol", "VendorProfile"]

#: Acquisition order in the simulated exam (contrast-enhanced T1 comes last).
ACQUISITION_ORDER: tuple[str, ...] = ("t1", "t2", "flair", "t1ce")


@dataclass(frozen=True)
class SequenceProtocol:
    """Acquisition parameters of one sequence as a scanner would write them.

    Times in ms, angles in degrees, ``duration_s`` in seconds.
    """

    series_description: str
    protocol_name: str
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    sequence_name: str
    repetition_time: float
    echo_time: float
    inversion_time: float | None
    flip_angle: float
    echo_train_length: int
    image_type: tuple[str, ...]
    duration_s: int
    contrast: bool = False


@dataclass(frozen=True)
class VendorProfile:
    """Scanner identity and the four brain-tumour protocols of one vendor style."""

    manufacturer: str
    model: str
    software_versions: tuple[str, ...]
    station_name: str
    imaging_frequency_mhz: float
    receive_coil: str
    contrast_agent: str
    study_description: str
    protocols: dict[str, SequenceProtocol]


def _siemens() -> VendorProfile:
    it = ("ORIGINAL", "PRIMARY", "M", "ND", "NORM")
    t1 = SequenceProtocol("AX T1 SE", "t1_se_tra", ("SE",), ("SK", "SP"), ("SAT1",), "*se2d1",
                          550.0, 10.0, None, 90.0, 1, it, 182)
    return VendorProfile(
        manufacturer="SIEMENS", model="Skyra", software_versions=("syngo MR E11",),
        station_name="MRC40123", imaging_frequency_mhz=123.2511, receive_coil="HeadNeck_20",
        contrast_agent="Gadobutrol", study_description="MR HEAD W WO CONTRAST",
        protocols={
            "t1": t1,
            "t2": SequenceProtocol("t2_tse_tra", "t2_tse_tra", ("SE",), ("SK",), ("PFP",),
                                   "*tse2d1_15", 5000.0, 100.0, None, 150.0, 15, it, 165),
            "flair": SequenceProtocol("AX FLAIR", "t2_tirm_tra_dark-fluid", ("SE", "IR"),
                                      ("SK", "SP", "MP"), ("IR",), "*tir2d1_16", 9000.0, 81.0,
                                      2500.0, 150.0, 16, it, 272),
            "t1ce": SequenceProtocol("AX T1 POST GD", "t1_se_tra_post", ("SE",), ("SK", "SP"),
                                     ("SAT1",), "*se2d1", 550.0, 10.0, None, 90.0, 1, it, 182,
                                     contrast=True),
        },
    )


def _ge() -> VendorProfile:
    it = ("ORIGINAL", "PRIMARY", "OTHER")
    proto = "ROUTINE BRAIN W/WO"
    t1 = SequenceProtocol("Ax T1 SE", proto, ("SE",), ("SK", "SP", "OSP"), ("FILTERED_GEMS",),
                          "", 600.0, 9.5, None, 90.0, 1, it, 190)
    return VendorProfile(
        manufacturer="GE MEDICAL SYSTEMS", model="DISCOVERY MR750",
        software_versions=("27", "LX", "MR27.0_R02"), station_name="GEMR750",
        imaging_frequency_mhz=127.7726, receive_coil="HNS Head", contrast_agent="GADAVIST",
        study_description="MRI BRAIN WITH AND WITHOUT CONTRAST",
        protocols={
            "t1": t1,
            "t2": SequenceProtocol("Ax T2 FSE", proto, ("SE",), ("SK", "OSP"),
                                   ("FAST_GEMS", "FILTERED_GEMS"), "", 5200.0, 102.0, None,
                                   125.0, 16, it, 150),
            "flair": SequenceProtocol("Ax T2 FLAIR", proto, ("SE", "IR"), ("SK", "SP", "MP", "OSP"),
                                      ("FAST_GEMS", "IR_GEMS", "FILTERED_GEMS"), "", 9000.0,
                                      81.5, 2250.0, 160.0, 24, it, 240),
            "t1ce": SequenceProtocol("Ax T1 SE +C", proto, ("SE",), ("SK", "SP", "OSP"),
                                     ("FILTERED_GEMS",), "", 600.0, 9.5, None, 90.0, 1, it, 190,
                                     contrast=True),
        },
    )


def _philips() -> VendorProfile:
    se = ("ORIGINAL", "PRIMARY", "M_SE", "M", "SE")
    ir = ("ORIGINAL", "PRIMARY", "M_IR", "M", "IR")
    t1 = SequenceProtocol("T1W_SE_TRA", "T1W_SE_TRA", ("SE",), ("SK",), ("FS",), "SE",
                          500.0, 8.0, None, 90.0, 1, se, 175)
    return VendorProfile(
        manufacturer="Philips Medical Systems", model="Ingenia",
        software_versions=("5.4.1", "5.4.1.0"), station_name="PHILIPS-MR1",
        imaging_frequency_mhz=127.7714, receive_coil="dS Head_32ch", contrast_agent="Gadovist",
        study_description="MR Brain tumour protocol",
        protocols={
            "t1": t1,
            "t2": SequenceProtocol("T2W_TSE_TRA", "T2W_TSE_TRA", ("SE",), ("SK",), ("FS",), "TSE",
                                   4500.0, 100.0, None, 90.0, 15, se, 140),
            "flair": SequenceProtocol("T2W_FLAIR_TRA", "T2W_FLAIR_TRA", ("SE", "IR"), ("SK", "MP"),
                                      ("IR", "FS"), "IR_TSE", 11000.0, 125.0, 2800.0, 90.0, 32,
                                      ir, 264),
            "t1ce": SequenceProtocol("T1W_SE_TRA_GD", "T1W_SE_TRA_GD", ("SE",), ("SK",), ("FS",),
                                     "SE", 500.0, 8.0, None, 90.0, 1, se, 175, contrast=True),
        },
    )


#: Vendor styles; ``--seed N`` picks ``VENDORS[N % 3]`` (seed 0 = the Siemens-style names).
VENDORS = (_siemens, _ge, _philips)
