"""Tables and figures built from records."""
from robustlab.reports.tables import records_table

__all__ = ["records_table"]
