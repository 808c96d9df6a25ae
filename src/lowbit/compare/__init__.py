"""`lowbit compare`: every family on the user's own data, the Pareto front, and the guide's
recommendation with its reasons, in a report."""

from lowbit.compare.candidates import CANDIDATES, Built, Candidate, register_candidate
from lowbit.compare.decide import Bar, pareto, recommend
from lowbit.compare.run import CompareSettings, compare

__all__ = ["CANDIDATES", "Bar", "Built", "Candidate", "CompareSettings", "compare", "pareto", "recommend",
           "register_candidate"]
