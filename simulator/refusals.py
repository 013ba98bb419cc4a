"""Refusals: what the simulated MCF answers ``E:{ER}`` with, and the STA bit that goes with it.

The document prescribes three texts (38h: amount, cancel; C0h: FN reused) and leaves the others
"spécifique au fabricant". Its examples write them upper case without accents
(``E:LE MONTANT N'EST PAS VALIDE``, ``E:ANNULEE``), so every text here follows that style.
"""
from __future__ import annotations

from typing import Literal

Bit = Literal["syntax_error", "invalid_command", "command_forbidden", "memory_write_error"] | None

# Prescribed by the document (p.13, p.21-22).
AMOUNT_INVALID = "LE MONTANT N'EST PAS VALIDE"
CANCELLED = "ANNULEE"
FN_REUSED = "LE NUMERO DE FACTURE EST DEJA UTILISE POUR LA FACTURE PRECEDENTE"
CREDIT_UNVERIFIABLE = (
    "LA FACTURE D'AVOIR N'A PAS PU ETRE VERIFIEE POUR LE MOMENT, VEUILLEZ REESSAYER"
)
# Manufacturer specific: ours.
CLIENT_MISSING = "LES INFORMATIONS DU CLIENT (C3) DOIVENT PRECEDER LA FACTURE"
INVOICE_ALREADY_OPEN = "UNE FACTURE EST DEJA OUVERTE"
NO_INVOICE_OPEN = "AUCUNE FACTURE OUVERTE"
NO_ITEMS = "LA FACTURE NE CONTIENT AUCUN ARTICLE"
ITEMS_AFTER_PAYMENT = "ARTICLE REFUSE APRES LE PAIEMENT"
ALREADY_PAID = "LE PAIEMENT EST DEJA COMPLET"
MEMORY_FULL = "MEMOIRE FISCALE PLEINE"
CLOCK_NOT_SET = "LA DATE ET L'HEURE NE SONT PAS REGLEES"
NIF_MISMATCH = "LE NIF NE CORRESPOND PAS AU CONTRIBUABLE"
RATE_MISMATCH = "LE TAUX DU GROUPE {group} N'EST PAS VALIDE"
ITEM_AMOUNT_INVALID = "LE MONTANT DE L'ARTICLE N'EST PAS VALIDE"
SPECIFIC_TAX_INVALID = "LE MONTANT DE LA TAXE SPECIFIQUE N'EST PAS VALIDE"
CREDIT_REFERENCE_UNKNOWN = "LA FACTURE DE REFERENCE EST INCONNUE"
CREDIT_REFERENCE_WRONG_TYPE = "LA FACTURE DE REFERENCE N'EST PAS DU BON TYPE"
CREDIT_EXCEEDS_ORIGINAL = "LE MONTANT DE L'AVOIR DEPASSE CELUI DE LA FACTURE DE REFERENCE"
MEMORY_WRITE_FAILED = "ERREUR D'ECRITURE DANS LA MEMOIRE FISCALE"
ANSWER_TOO_LONG = "LA REPONSE DEPASSE 200 OCTETS"
CLIENT_WHILE_OPEN = "INFORMATIONS DU CLIENT REFUSEES PENDANT UNE FACTURE OUVERTE"


class Refusal(Exception):
    """The command is answered ``E:{text}`` (and ``bit`` is raised in STA); nothing changes."""

    def __init__(self, text: str, bit: Bit = None) -> None:
        super().__init__(text)
        self.text = text
        self.bit = bit


def syntax(detail: str) -> Refusal:
    """Malformed DATA: STA 0.0, with a short description of what was wrong."""
    return Refusal(f"ERREUR DE SYNTAXE: {detail}", "syntax_error")


def forbidden(text: str) -> Refusal:
    """Not allowed in the current mode (no invoice open, one already open...): STA 1.1."""
    return Refusal(text, "command_forbidden")
