"""Mixed precision to a size budget: how sensitive each tensor is to each format (fisher.py,
sensitivity.py), the exact allocation under a byte budget (solve.py, allocate.py), and the checks
that the prediction can be trusted (validate.py)."""
