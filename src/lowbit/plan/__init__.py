"""Planning: the guide's decision rule and the five axes, as data (rules.toml, hardware.toml)."""

from lowbit.plan.model_info import ModelInfo
from lowbit.plan.rule import Inputs, Plan, make_plan, rule_text

__all__ = ["Inputs", "ModelInfo", "Plan", "make_plan", "rule_text"]
