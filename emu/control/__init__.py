"""Controllers: turn model objects into data-plane tables (chain names, DNS zone, ...)."""
