"""Sending the results to a PACS by DICOM C-STORE (DIMSE), with bounded waits.

The opt-in last step of a run (``brats.send.dimse`` in ``app.yaml`` or ``BRATS_SEND_DIMSE``,
``"AE_TITLE@host:port"``): after the SEG and the SR are published in the output folder, both go
to the PACS over one association. Every wait is bounded by ``timeout_s`` (TCP connect,
association, each C-STORE response). Failure is reported as :class:`ResultsNotSentError` (one
line); the local outputs are never touched by a failed send.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_CALLING_AET", "Destination", "ResultsNotSentError", "parse_destination", "send_c_store"]

DEFAULT_CALLING_AET = "BRATS_SEG"
_AET = re.compile(r"^[ -~]{1,16}$")  # printable ASCII, 1-16 characters (PS3.5 AE)


class ResultsNotSentError(Exception):
    """The results could not be sent (one-line message); the local outputs are kept."""


@dataclass(frozen=True)
class Destination:
    """A DICOM Storage SCP: its AE title, host and port."""

    called_aet: str
    host: str
    port: int

    def text(self) -> str:
        return f"{self.called_aet}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``"AE_TITLE@host:port"`` -> :class:`Destination`; ``ValueError`` (one line) when malformed."""
    m = re.fullmatch(r"(?P<aet>[^@]+)@(?P<host>[^:@\s]+):(?P<port>\d{1,5})", text.strip())
    if not m:
        raise ValueError(f"DICOM destination must be AE_TITLE@host:port, got {text!r}")
    aet, port = m["aet"].strip(), int(m["port"])
    if not _AET.fullmatch(aet) or "\\" in aet:
        raise ValueError(f"AE title must be 1-16 printable ASCII characters, got {aet!r}")
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, got {port}")
    return Destination(aet, m["host"], port)


def send_c_store(files: Sequence[Path], destination: Destination, timeout_s: float = 30.0,
                 calling_aet: str = DEFAULT_CALLING_AET) -> list[int]:
    """C-STORE ``files`` to ``destination`` over one association.

    One presentation context per SOP class in ``files`` (Explicit and Implicit VR Little
    Endian). Returns the response status per file (all 0x0000 on return).

    Raises
    ------
    ResultsNotSentError
        No association (refused, nothing listening, no answer within ``timeout_s``), or a file
        not stored (failure status, no response).
    """
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = float(timeout_s)
    ae.connection_timeout = float(timeout_s)
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    where = destination.text()
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.called_aet)
    if not assoc.is_established:
        why = ("association rejected (called AE title or calling AE not accepted)" if assoc.is_rejected else
               f"no association (connection refused, aborted, or no answer within {timeout_s:g} s)")
        raise ResultsNotSentError(f"results not sent to {where}: {why}")
    statuses: list[int] = []
    try:
        for path, ds in zip(files, datasets):
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status and "Status" in status else -1
            statuses.append(code)
            if code != 0x0000:
                raise ResultsNotSentError(
                    f"results not sent to {where}: {Path(path).name} "
                    + (f"refused (status 0x{code:04X})" if code >= 0 else f"got no answer within {timeout_s:g} s")
                )
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses
