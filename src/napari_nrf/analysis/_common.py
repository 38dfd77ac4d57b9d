"""The analysis errors (shared by cluster maps and region scoring)."""

from napari_nrf.errors import Cancelled, NapariNRFError


class AnalysisError(NapariNRFError):
    """Bad input to an analysis function."""


class AnalysisCancelled(Cancelled):
    """Raised inside an analysis when its ``cancel()`` callback returns True."""
