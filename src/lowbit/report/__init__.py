"""Tables and JSON for results."""

from lowbit.report.table import results_table, write_json

__all__ = ["results_table", "write_json"]
