"""The crowd's mix of worker types: the default shares, and a user's `--crowd` on top of them.

Pure Python (no numpy), so settings and the CLI can check a mix before anything heavy loads.
"""

from __future__ import annotations

# type -> share of the market, by default
DEFAULT_SHARES: dict[str, float] = {
    "diligent": 0.60,
    "colour_biased": 0.10,
    "lumper": 0.05,
    "splitter": 0.05,
    "careless": 0.10,
    "spammer": 0.10,
}


class MixError(ValueError):
    """A crowd mix that names an unknown type or whose shares cannot be met."""


def parse_mix(text: str) -> dict[str, float]:
    """`"spammer=0.3,careless=0.2"` -> `{"spammer": 0.3, "careless": 0.2}` (checked by `shares`)."""
    mix: dict[str, float] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            mix[name.strip()] = float(value)
        except ValueError:
            raise MixError(f"{part!r}: expected TYPE=SHARE, e.g. spammer=0.3") from None
    shares(mix)
    return mix


def shares(mix: dict[str, float] | None = None) -> dict[str, float]:
    """Every type's share: those in `mix` as given, the others the rest in their default proportions.

    So `{"spammer": 0.3}` keeps diligent workers six times as common as careless ones and leaves
    70% of the market to the other five types.
    """
    if not mix:
        return dict(DEFAULT_SHARES)  # exactly: a rescaled 0.6 could round a worker into another type
    unknown = sorted(set(mix) - set(DEFAULT_SHARES))
    if unknown:
        raise MixError(f"unknown worker type {', '.join(unknown)}; the types are {', '.join(DEFAULT_SHARES)}")
    bad = [name for name, share in mix.items() if not 0.0 <= share <= 1.0]
    if bad:
        raise MixError(f"share of {bad[0]} is {mix[bad[0]]}; a share is between 0 and 1")
    named = sum(mix.values())
    others = {name: share for name, share in DEFAULT_SHARES.items() if name not in mix}
    rest = sum(others.values())
    if named > 1.0 + 1e-9 or (not others and abs(named - 1.0) > 1e-9):
        raise MixError(
            f"the shares named add up to {named:g}; they must leave room for the others (at most 1)"
        )
    scale = (1.0 - named) / rest if rest else 0.0
    return {name: mix[name] if name in mix else DEFAULT_SHARES[name] * scale for name in DEFAULT_SHARES}
