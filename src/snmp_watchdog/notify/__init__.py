"""Everything that goes on the wire: the MIB's OIDs, notification messages, and their delivery."""
