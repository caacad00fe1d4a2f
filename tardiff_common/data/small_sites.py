"""Sites below ``data.min-site-records``: dropped (the default) or pooled into one "other" site.

Many-small-sites sources (the eICU demo with hospitals as sites: 10-40 stays each) have
hospitals too small to split into train / guidance / tuning / test. ``data.small-sites``
chooses what happens to them:

* ``"drop"``: ``registry.drop_small_sites`` (warned, recorded in ``meta["dropped_sites"]``);
* ``"pool"``: ``pool_small_sites`` concatenates them, in site order, into one site named
  ``"other"`` (its ``meta["pooled_sites"]`` lists {name: records}); if the pooled site is itself
  below the minimum, it is dropped like any small site. In a deployment "other" is a data holder
  the small hospitals trust with their records (a regional centre): the option states that
  assumption, it does not make it.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

from .contract import SiteData, concat_sites

__all__ = ["SMALL_SITES", "OTHER_SITE", "pool_small_sites"]

SMALL_SITES = ("drop", "pool")
OTHER_SITE = "other"


def pool_small_sites(sites: list[SiteData], min_site_records: int, *, source: str = "data",
                     name: str = OTHER_SITE) -> list[SiteData]:
    """The sites with at least ``min_site_records`` records, then (if any site is smaller) one
    site ``name`` holding all the smaller sites' records; warns naming the pooled sites. The
    pooled site is dropped (with a warning) when it is itself below the minimum; raises
    ``ValueError`` when no site is left."""
    small = [s for s in sites if s.num_records < min_site_records]
    kept = [s for s in sites if s.num_records >= min_site_records]
    if not small:
        return list(sites)
    if any(s.name == name for s in kept):
        raise ValueError(f"{source}: a site is already named {name!r}; cannot pool the small sites under that name")
    sizes = {s.name: s.num_records for s in small}
    other = concat_sites(small, name)
    other = replace(other, meta={**small[0].meta, "pooled_sites": sizes, "min_site_records": min_site_records})
    if other.num_records >= min_site_records:
        warnings.warn(f"{source}: pooled {len(small)} of {len(sites)} site(s) with fewer than {min_site_records} "
                      f"records ({other.num_records} records in all) into site {name!r}", stacklevel=3)
        kept.append(other)
    else:
        warnings.warn(f"{source}: dropped site {name!r}: the {len(small)} site(s) below {min_site_records} records "
                      f"pool to only {other.num_records}", stacklevel=3)
    if not kept:
        raise ValueError(f"{source}: no site has at least min_site_records={min_site_records} records, "
                         f"pooled or not (sizes: {sizes})")
    return kept
