"""The signers behind one seam (base.Signer) and the policy that walks them (policy.SignerPolicy).

`device` lives with its driver glue in agent/device/signer.py; the others are here.
"""
from .base import Breaker, Probing, Settling, Signer, SignerUnavailable
from .policy import PolicyEntry, SignerPolicy

__all__ = ["Breaker", "PolicyEntry", "Probing", "Settling", "Signer", "SignerPolicy", "SignerUnavailable"]
