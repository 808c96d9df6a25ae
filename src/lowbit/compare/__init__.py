"""`lowbit compare`: every family on the user's own data, the Pareto front, and the guide's
recommendation with its reasons, in a report."""

from lowbit.compare.candidates import CANDIDATES, Built, Candidate, register_candidate
from lowbit.compare.decide import Bar, Recommendation, pareto, recommend
from lowbit.compare.results import Results
from lowbit.compare.row import Row
from lowbit.compare.run import Comparison, compare
from lowbit.compare.settings import CompareSettings

__all__ = ["CANDIDATES", "Bar", "Built", "Candidate", "CompareSettings", "Comparison", "Recommendation", "Results",
           "Row", "compare", "pareto", "recommend", "register_candidate"]
