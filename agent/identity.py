"""Who this agent is: the outlet it was enrolled for, and the cloud's issuer key (public data)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class OutletIdentity:
    outlet_id: str
    outlet_name: str
    merchant_nif: str
    merchant_name: str
    time_zone: str
    isf: str
    agent_id: str
    issuer_public_key: str
    taxpayer: dict

    @classmethod
    def load(cls, path: Path) -> "OutletIdentity":
        data = json.loads(path.read_text("utf-8"))
        return cls(**data)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False), "utf-8")
        tmp.replace(path)
